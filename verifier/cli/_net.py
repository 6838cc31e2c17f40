"""What the network servers (``medverify gateway``, ``medverify serve``) share: the listen address, the PACS they
forward to, and TLS.

An encrypted TLS key's passphrase comes from :data:`TLS_KEY_PASSPHRASE_ENV`, else from the file named by
:data:`TLS_KEY_PASSPHRASE_FILE_ENV` (0600), never from an argument or a prompt, and never appears in a message.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from verifier.errors import InputError

if TYPE_CHECKING:
    from verifier.intake.queue import Destination

__all__ = [
    "TLS_KEY_PASSPHRASE_ENV",
    "TLS_KEY_PASSPHRASE_FILE_ENV",
    "parse_forward",
    "parse_listen",
    "server_tls_context",
]

#: Passphrase of an encrypted --tls-key: this variable, else the file named by the next one (never an argument).
TLS_KEY_PASSPHRASE_ENV = "MEDVERIFY_TLS_KEY_PASSPHRASE"  # noqa: S105 - a variable's name, not a password
TLS_KEY_PASSPHRASE_FILE_ENV = "MEDVERIFY_TLS_KEY_PASSPHRASE_FILE"  # noqa: S105


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host:
        raise InputError(f"--listen takes HOST:PORT (e.g. 127.0.0.1:8080), not {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise InputError(f"--listen: {port_text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise InputError(f"--listen: port {port} is out of range")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InputError(f"--listen: {host!r} is not an IP address (or localhost)") from None
    return host, port


def parse_forward(value: str) -> Destination:
    """``--forward HOST:PORT:AET``: the PACS that gets what the server accepts."""
    from verifier.intake.queue import Destination

    try:
        return Destination.parse(value)
    except ValueError as exc:
        raise InputError(f"--forward: {exc}") from None


def tls_key_passphrase() -> str | None:
    """The passphrase of an encrypted TLS key, from the environment or a 0600 file; None when neither is set."""
    value = os.environ.get(TLS_KEY_PASSPHRASE_ENV)
    if value:
        return value
    file = os.environ.get(TLS_KEY_PASSPHRASE_FILE_ENV)
    if not file:
        return None
    path = Path(file)
    try:
        if path.stat().st_mode & 0o077:
            raise InputError(f"{TLS_KEY_PASSPHRASE_FILE_ENV}: {path} must not be readable by group or others")
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise InputError(f"{TLS_KEY_PASSPHRASE_FILE_ENV}: cannot read {path}: {exc.strerror}") from None
    if not text:
        raise InputError(f"{TLS_KEY_PASSPHRASE_FILE_ENV}: {path} is empty")
    return text


def server_tls_context(
    cert: Path | None, key: Path | None, client_ca: Path | None, *, client_ca_option: str
) -> tuple[ssl.SSLContext, str | None] | None:
    """The server TLS context of ``--tls-cert/--tls-key`` (and ``client_ca_option`` for client certificates),
    checked now so that a bad file or passphrase is a clear error at start-up; with the key's passphrase.

    None when TLS is not asked for.
    """
    if cert is None and key is None:
        if client_ca is not None:
            raise InputError(f"{client_ca_option} needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise InputError("TLS needs both --tls-cert and --tls-key")
    password = tls_key_passphrase()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=password or "")
    except FileNotFoundError as exc:
        raise InputError(f"TLS: {exc.filename} does not exist") from None
    except (ssl.SSLError, OSError, ValueError):
        hint = "" if password else f" (an encrypted key needs {TLS_KEY_PASSPHRASE_ENV})"
        raise InputError(
            f"TLS: cannot load the certificate {cert} with the key {key}: not PEM, not a matching pair, "
            f"or the wrong passphrase{hint}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError):
            raise InputError(f"{client_ca_option}: {client_ca} is not a readable PEM CA certificate file") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context, password
