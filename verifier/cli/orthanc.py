"""``medverify orthanc install-plugin``: put the medverify filter into an existing Orthanc (Python plugin)."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path
from typing import Annotated, Any

import typer

from verifier.cli import _common, app
from verifier.cli._options import DbOption, IntakeChecksOption, ModelOption
from verifier.errors import ConfigError, InputError

__all__ = ["install_plugin", "plugin_script", "strip_json_comments"]

orthanc_app = typer.Typer(help="Orthanc integration: the medverify filter as an Orthanc Python plugin.")
app.add_typer(orthanc_app, name="orthanc")

#: Where Debian's orthanc-python puts the plugin.
DEBIAN_PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"

_SCRIPT = '''\
# Written by `medverify orthanc install-plugin`: checks every upload before Orthanc stores it.
# Configuration: the "MedVerify" section of Orthanc's configuration. Regenerate rather than edit.
import sys

sys.path[:0] = {paths!r}

import orthanc

try:
    from verifier.intake.orthanc_plugin import register

    register(orthanc)
except BaseException as error:  # fail closed: without medverify, Orthanc stores nothing
    _why = "medverify is not working (%s: %s); every upload is refused" % (type(error).__name__, error)
    orthanc.LogError("medverify: " + _why)

    def _refuse_cstore(instance):
        return 0xA700

    def _refuse_received(data, origin):
        # A C-STORE must reach the filter above, which answers a failure: a DISCARD here would answer Success.
        if origin == orthanc.InstanceOrigin.DICOM_PROTOCOL:
            return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
        return orthanc.ReceivedInstanceAction.DISCARD, None

    def _refuse_rest(output, uri, **request):
        import json
        import urllib.parse

        if request.get("method") == "GET":  # listing stays possible; storing does not
            query = urllib.parse.urlencode(request.get("get") or {{}})
            output.AnswerBuffer(orthanc.RestApiGet("/instances" + ("?" + query if query else "")), "application/json")
            return

        body = json.dumps({{"Status": "Error", "Message": _why}})  # ASCII: len() is the byte count
        output.SendHttpStatus(503, body, len(body))

    orthanc.RegisterIncomingCStoreInstanceFilter(_refuse_cstore)
    orthanc.RegisterReceivedInstanceCallback(_refuse_received)
    orthanc.RegisterRestCallback("/instances", _refuse_rest)
'''


def plugin_script(extra_paths: list[str] | None = None) -> str:
    """The plugin script: this installation's import paths first, then the fail-closed registration."""
    import verifier

    root = str(Path(verifier.__file__).resolve().parent.parent)
    paths: list[str] = []
    for p in [*(extra_paths or []), root, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]:
        if p not in paths:
            paths.append(p)
    return _SCRIPT.format(paths=paths)


def strip_json_comments(text: str) -> str:
    """Orthanc's configuration files allow ``//`` and ``/* */`` comments; remove them (not inside strings)."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
        elif c == '"':
            in_string = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ConfigError("unterminated /* comment in the Orthanc configuration")
            i = end + 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(strip_json_comments(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise InputError(f"cannot read the Orthanc configuration {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid Orthanc configuration JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return data


def _write_config(path: Path, data: dict[str, Any]) -> None:
    backup = path.with_name(path.name + ".medverify-backup")
    if not backup.exists():
        shutil.copy2(path, backup)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _has_python_plugin(plugins: list[Any]) -> bool:
    for entry in plugins:
        p = Path(str(entry))
        if "OrthancPython" in p.name or (p.is_dir() and any(p.glob("libOrthancPython*"))):
            return True
    return False


def _load_plugin(config: Path, data: dict[str, Any], script_path: Path, plugin_library: str) -> Path:
    """Have Orthanc load its Python plugin and run ``script_path``; return the file that names the script.

    ``data`` (the configuration in ``config``) gets the plugin library unless a Python plugin is already listed.
    The script goes into ``data`` too, unless another ``*.json`` next to ``config`` already sets
    ``PythonScript`` (Debian's ``python.json``): that file is updated now, since Orthanc refuses a setting
    defined twice.
    """
    plugins = data.get("Plugins") or []
    if not isinstance(plugins, list):
        raise ConfigError(f"{config}: Plugins must be a list")
    if not _has_python_plugin(plugins):
        plugins.append(plugin_library)
    data["Plugins"] = plugins

    holder = config
    for sibling in sorted(config.parent.glob("*.json")):
        if sibling != config and "PythonScript" in _read_config(sibling):
            holder = sibling
    if holder == config:
        data["PythonScript"] = str(script_path)
        data.setdefault("PythonVerbose", False)
    else:
        other = _read_config(holder)
        other["PythonScript"] = str(script_path)
        _write_config(holder, other)
    return holder


@orthanc_app.command("install-plugin", help="Write the plugin script and its configuration into Orthanc's.")
def install_plugin(
    config: Annotated[Path, typer.Option("--config", help="Orthanc's configuration file (JSON, comments allowed).")],
    script: Annotated[
        Path | None, typer.Option("--script", help="Where to write the plugin script (default: next to --config).")
    ] = None,
    home: Annotated[Path | None, typer.Option("--home", help="medverify home for Orthanc (default: this one).")] = None,
    checks: IntakeChecksOption = None,
    quarantine: Annotated[Path | None, typer.Option("--quarantine", help="Quarantine directory.")] = None,
    model: ModelOption = None,
    db: DbOption = None,
    allow: Annotated[
        list[str] | None, typer.Option("--allow", help="Allowed calling AE title for C-STORE (repeatable).")
    ] = None,
    python_path: Annotated[
        list[str] | None, typer.Option("--python-path", help="Extra import path first in Orthanc's Python.")
    ] = None,
    plugin_library: Annotated[
        str, typer.Option("--plugin-library", help="orthanc-python's shared library.")
    ] = DEBIAN_PYTHON_PLUGIN,
) -> None:
    """Edit ``--config`` (a backup is kept as ``*.medverify-backup``) and write the plugin script.

    If another ``*.json`` next to it already sets ``PythonScript`` (Debian's ``python.json``), that file is
    updated instead, since Orthanc refuses a setting defined twice.
    """
    from verifier.checker import INTAKE_DEFAULT_CHECKS, Check, parse_checks
    from verifier.intake.gateway import parse_allowed_callers

    config = config.resolve()
    if not config.is_file():
        raise InputError(f"{config} is not a file (give Orthanc's main configuration file)")
    selected = parse_checks(checks, INTAKE_DEFAULT_CHECKS)  # refuse a typo now rather than inside Orthanc
    allowed = parse_allowed_callers(allow or [])
    settings = _common.settings()
    if Check.DETECTOR in selected and model is None and settings.detector_model is None:
        from verifier.setup import shipped_detector_bundle

        if shipped_detector_bundle() is None:
            raise InputError("--checks detector: no detector model (the package ships none); pass --model BUNDLE")
    script_path = (script or config.parent / "medverify_plugin.py").resolve()
    data = _read_config(config)

    section: dict[str, Any] = {
        "Home": str((home or settings.home).resolve()),
        "QuarantineDirectory": str(quarantine or settings.intake_quarantine_dir or settings.home / "quarantine"),
    }
    if checks:  # else the plugin runs the intake default of the medverify it runs with
        section["Checks"] = ",".join(sorted(c.value for c in selected))
    if model is not None:
        section["DetectorModel"] = str(model.resolve())
    if db or settings.db_url:
        section["DatabaseUrl"] = db or settings.db_url
    if allowed:
        section["AllowedCallers"] = ",".join(str(c) for c in allowed)
    data["MedVerify"] = section
    holder = _load_plugin(config, data, script_path, plugin_library)
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(plugin_script(python_path), encoding="utf-8")
    _write_config(config, data)
    _common.console.print(f"wrote {script_path}", highlight=False)
    _common.console.print(
        f"updated {config}" + (f" and {holder} (PythonScript)" if holder != config else ""), highlight=False
    )
    names = ", ".join(sorted(c.value for c in selected))
    _common.console.print(
        f"Orthanc will check every upload ({names}) with medverify home {section['Home']}; restart Orthanc.",
        highlight=False,
    )
