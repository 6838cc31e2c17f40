"""Settings: one typed object read from a TOML file and ``MEDVERIFY_*`` environment variables.

Precedence, lowest first: built-in defaults, ``$MEDVERIFY_HOME/config.toml`` (or the file named by
``MEDVERIFY_CONFIG``), then ``MEDVERIFY_<FIELD>`` environment variables. The home directory (default
``~/.medverify``) holds keys, the audit database and caches.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from verifier.errors import ConfigError

__all__ = ["Settings"]

_ENV_PREFIX = "MEDVERIFY_"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a medverify command may be configured with."""

    home: Path
    #: SQLAlchemy URL of the audit database; empty means SQLite in ``home/audit.db``.
    db_url: str = ""
    #: Name of the key that ``medverify sign`` uses when ``--key`` is not given.
    default_key: str = "generator"
    #: A signed audit checkpoint is written every this many records.
    checkpoint_interval: int = 1000
    #: File holding the key passphrase (used when ``MEDVERIFY_KEY_PASSPHRASE`` is not set).
    key_passphrase_file: Path | None = None
    #: Site policy file (TOML); empty means the documented default policy.
    policy_file: Path | None = None
    #: Detector model bundle for ``--checks detector``; empty means the bundle shipped in the package.
    detector_model: Path | None = None
    #: Calling AE titles the DICOM gateway and Orthanc plugin accept, comma-separated, each ``AE`` or
    #: ``AE@ADDRESS`` (an IP address or network such as ``10.1.0.0/16``). Empty: nobody (the gateway refuses to
    #: start until callers are configured).
    gateway_allowed_callers: str = ""
    #: Where the intake keeps quarantined instances; empty means ``home/quarantine``.
    intake_quarantine_dir: Path | None = None
    #: The DICOM gateway's store-and-forward spool; empty means ``home/spool``.
    intake_spool_dir: Path | None = None
    #: URL that gets a JSON POST for every quarantined instance (no patient data); empty: none.
    quarantine_webhook_url: str = ""
    #: Orthanc's REST URL (e.g. ``http://127.0.0.1:8042``), where a reviewer's release of what the Orthanc plugin
    #: quarantined goes; empty: such instances can be rejected but not released.
    orthanc_url: str = ""
    #: Real DICOM images the training page (/ui/train) draws from; empty: no training page.
    training_corpus: Path | None = None

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def database_url(self) -> str:
        """The effective audit database URL."""
        return self.db_url or f"sqlite:///{self.home / 'audit.db'}"

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
        """Read settings from defaults, the TOML file and the environment."""
        env = os.environ if env is None else env
        home = Path(env.get(f"{_ENV_PREFIX}HOME") or Path.home() / ".medverify").expanduser()
        values: dict[str, Any] = {}
        path = config_file or (Path(env[f"{_ENV_PREFIX}CONFIG"]) if env.get(f"{_ENV_PREFIX}CONFIG") else None)
        if path is None and (home / "config.toml").is_file():
            path = home / "config.toml"
        if path is not None:
            try:
                with open(path, "rb") as fh:
                    values.update(tomllib.load(fh))
            except OSError as exc:
                raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from exc
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in fields:
            if name == "home":
                continue
            key = f"{_ENV_PREFIX}{name.upper()}"
            if key in env:
                values[name] = env[key]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)} in {path}")
        values.pop("home", None)
        return cls(home=home, **_coerce(values))


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name == "checkpoint_interval":
            try:
                out[name] = int(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"checkpoint_interval must be an integer, not {value!r}") from exc
            if out[name] < 1:
                raise ConfigError("checkpoint_interval must be at least 1")
        elif name in (
            "key_passphrase_file", "policy_file", "detector_model", "intake_quarantine_dir", "intake_spool_dir",
            "training_corpus",
        ):
            out[name] = Path(str(value)).expanduser() if value else None
        elif name == "gateway_allowed_callers" and isinstance(value, list):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = str(value)
    return out
