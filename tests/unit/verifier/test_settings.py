"""Settings: defaults, the TOML file and MEDVERIFY_* environment variables, in that order of precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from verifier.errors import ConfigError
from verifier.settings import Settings


def test_defaults_live_in_the_home(tmp_path: Path) -> None:
    settings = Settings.load(env={"MEDVERIFY_HOME": str(tmp_path)})
    assert settings.home == tmp_path
    assert settings.keys_dir == tmp_path / "keys"
    assert settings.database_url == f"sqlite:///{tmp_path / 'audit.db'}"
    assert settings.checkpoint_interval == 1000


def test_toml_file_then_environment(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('default_key = "scanner"\ncheckpoint_interval = 50\n')
    from_file = Settings.load(env={"MEDVERIFY_HOME": str(tmp_path)})
    assert (from_file.default_key, from_file.checkpoint_interval) == ("scanner", 50)
    env = {"MEDVERIFY_HOME": str(tmp_path), "MEDVERIFY_CHECKPOINT_INTERVAL": "7", "MEDVERIFY_DB_URL": "sqlite://"}
    overridden = Settings.load(env=env)
    assert overridden.checkpoint_interval == 7
    assert overridden.default_key == "scanner"
    assert overridden.database_url == "sqlite://"


def test_explicit_config_file(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('db_url = "postgresql+psycopg://db.example/medverify"\n')
    settings = Settings.load(env={"MEDVERIFY_HOME": str(tmp_path / "h"), "MEDVERIFY_CONFIG": str(config)})
    assert settings.database_url == "postgresql+psycopg://db.example/medverify"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("nonsense = 1\n", "unknown setting"),
        ("checkpoint_interval = 0\n", "at least 1"),
        ('checkpoint_interval = "many"\n', "integer"),
        ("this is not toml\n", "not valid TOML"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(content)
    with pytest.raises(ConfigError, match=message):
        Settings.load(env={"MEDVERIFY_HOME": str(tmp_path)})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.load(env={"MEDVERIFY_HOME": str(tmp_path), "MEDVERIFY_CONFIG": str(tmp_path / "absent.toml")})
