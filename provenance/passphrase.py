"""Where the key store's passphrase comes from: the environment, a 0600 file, or a prompt, asked only when a
private key is first needed."""

from __future__ import annotations

import getpass
import os
import secrets
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from provenance._internal.files import ensure_private_dir, write_private_file
from provenance.errors import PassphraseError

__all__ = ["PASSPHRASE_ENV", "PassphraseSource", "create_passphrase_file", "passphrase_source"]

#: Environment variable read first by :func:`passphrase_source`.
PASSPHRASE_ENV = "MEDVERIFY_KEY_PASSPHRASE"  # noqa: S105 (a variable name, not a secret)

PassphraseSource = Callable[[], bytes]

_NO_PASSPHRASE_HELP = (
    f"no key passphrase available: set {PASSPHRASE_ENV}, point the key_passphrase_file setting "
    "(MEDVERIFY_KEY_PASSPHRASE_FILE) at a file with mode 0600, or run interactively to be prompted; "
    "for unattended demos, `medverify keys init --generate-passphrase-file` writes one next to the keys"
)


def passphrase_source(
    *,
    env: Mapping[str, str] | None = None,
    passphrase_file: Path | None = None,
    interactive: bool = False,
) -> PassphraseSource:
    """A callable that finds the key passphrase when a private key is first needed.

    It tries, in order: the ``MEDVERIFY_KEY_PASSPHRASE`` variable in ``env`` (default ``os.environ``, read at
    call time); ``passphrase_file`` if it exists (it must not be readable by group or others); and, if
    ``interactive`` and standard input is a terminal, a prompt (asked once, then remembered). Otherwise it
    raises :class:`PassphraseError` saying how to provide one.
    """
    prompted: list[bytes] = []

    def source() -> bytes:
        environ = os.environ if env is None else env
        value = environ.get(PASSPHRASE_ENV)
        if value:
            return value.encode("utf-8")
        if passphrase_file is not None and passphrase_file.exists():
            return _read_passphrase_file(passphrase_file)
        if interactive and sys.stdin is not None and sys.stdin.isatty():
            if not prompted:
                entered = getpass.getpass("medverify key passphrase: ")
                if not entered:
                    raise PassphraseError("an empty key passphrase is not allowed")
                prompted.append(entered.encode("utf-8"))
            return prompted[0]
        raise PassphraseError(_NO_PASSPHRASE_HELP)

    return source


def _read_passphrase_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise PassphraseError(f"passphrase file {path} is not a regular file")
        if mode & 0o077:
            raise PassphraseError(
                f"passphrase file {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run `chmod 600 {path}`"
            )
        data = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise PassphraseError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    if not data:
        raise PassphraseError(f"passphrase file {path} is empty")
    return data


def create_passphrase_file(path: Path) -> None:
    """Write a new random passphrase to ``path`` (mode 0600); :class:`KeyStoreError` if it already exists."""
    ensure_private_dir(path.parent)
    write_private_file(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"))
