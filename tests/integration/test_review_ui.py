"""The quarantine review pages in a real browser: DCMTK storescu -> ``medverify gateway`` -> quarantine; a reviewer
in Chromium (Playwright, Debian's /usr/bin/chromium) releases one instance, which reaches DCMTK storescp behind the
gateway, and rejects another; a look-only token cannot act; a hostile DICOM shows an error panel.

Screenshots go to ``$MEDVERIFY_UI_SCREENSHOTS`` (default: the test's temporary directory).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pydicom
import pytest
from intake_peers import (
    dcmtk_tool,
    free_port,
    make_samples,
    send_cut_short,
    sender_env,
    stop_process,
    wait_port,
)
from pydicom.data import get_testdata_file
from testkit import CHROMIUM, TEST_KEY_PASSPHRASE, jsonl, run_cli, sync_playwright_or_skip

from verifier.audit import AuditLog

pytestmark = pytest.mark.dcmtk

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from verifier.cli import app_main; app_main()"]


@contextlib.contextmanager
def _running(cmd: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            try:
                wait_port(port, timeout=120, proc=proc)
            except BaseException:
                print(log.read_text(errors="replace")[-4000:])
                raise
            yield proc
        finally:
            stop_process(proc)


class _Hooks(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@contextlib.contextmanager
def _webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Hooks.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hooks.received
    finally:
        server.shutdown()
        server.server_close()


def _store(port: int, path: Path) -> str:
    proc = subprocess.run(
        [dcmtk_tool("storescu"), "-aet", "STORESCU", "-aec", "MEDVERIFY", "127.0.0.1", str(port), str(path)],
        capture_output=True, text=True, timeout=60, env=sender_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _wait_for_files(directory: Path, count: int, timeout: float = 60.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
        if len(files) >= count:
            time.sleep(0.2)
            return files
        time.sleep(0.2)
    return sorted(directory.iterdir())


def _wait_for_image(page: Any, selector: str, timeout: float = 60.0) -> None:
    """Until the image has loaded (polled from here: the pages' CSP forbids the eval of wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not page.eval_on_selector(selector, "e => e.complete && e.naturalWidth > 0"):
        assert time.monotonic() < deadline, f"{selector} did not load"
        time.sleep(0.2)


def _token(capsys: pytest.CaptureFixture[str], name: str, scope: str) -> tuple[str, str]:
    code, out, err = run_cli(capsys, "tokens", "create", name, "--scope", scope, "--format", "json")
    assert code == 0, err
    info = json.loads(out)
    return info["id"], info["token"]


@pytest.fixture
def site(signing_keystore_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A medverify home (test key store), the uploads, and a site policy that also quarantines MALFORMED input."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(signing_keystore_template, home / "keys")
    samples = make_samples(home, tmp_path / "uploads")
    hostile = pydicom.dcmread(samples["unsigned_synthetic"])
    hostile.PatientName = "<script>alert(1)</script>"
    hostile.PatientID = "P-<b>7</b>"
    hostile.AccessionNumber = "ACC-0042"
    samples["hostile_names"] = tmp_path / "uploads" / "hostile_names.dcm"
    hostile.save_as(samples["hostile_names"], enforce_file_format=True)
    corpus = tmp_path / "corpus"  # the training page's real images
    corpus.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copyfile(get_testdata_file(name), corpus / name)
    policy = tmp_path / "policy.toml"
    policy.write_text('version = "review-test-1"\n[actions]\nMALFORMED = "quarantine"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVERIFY_")}
    env.update(MEDVERIFY_HOME=str(home), MEDVERIFY_KEY_PASSPHRASE=TEST_KEY_PASSPHRASE, OMP_NUM_THREADS="1",
               MEDVERIFY_POLICY_FILE=str(policy), MEDVERIFY_TRAINING_CORPUS=str(corpus))  # fmt: skip
    for name, value in env.items():  # the same home for the CLI commands the test runs in this process
        if name.startswith("MEDVERIFY_"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("MEDVERIFY_CONFIG", raising=False)
    shots = Path(os.environ.get("MEDVERIFY_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    return {"home": home, "samples": samples, "env": env, "shots": shots}


def test_review_release_reject_end_to_end(
    site: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sync_playwright = sync_playwright_or_skip()
    home, samples, env, shots = site["home"], site["samples"], site["env"], site["shots"]
    pacs_dir, pacs_port, gw_port, ui_port = tmp_path / "pacs", free_port(), free_port(), free_port()
    pacs_dir.mkdir()
    reviewer_id, reviewer = _token(capsys, "alice-review", "review")
    _auditor_id, auditor = _token(capsys, "bob-audit", "audit-read")
    gateway = [*CLI, "gateway", "--listen", f"127.0.0.1:{gw_port}", "--forward", f"127.0.0.1:{pacs_port}:PACS",
               "--allow", "STORESCU@127.0.0.1", "--checks", "signature,watermark", "--retry-max", "0.5"]  # fmt: skip
    storescp = [dcmtk_tool("storescp"), "-aet", "PACS", "+xa", "-od", str(pacs_dir), str(pacs_port)]
    with contextlib.ExitStack() as stack:
        hook_url, hooks = stack.enter_context(_webhook_receiver())
        stack.enter_context(_running(storescp, pacs_port, env, tmp_path / "pacs.log"))
        gw_env = {**env, "MEDVERIFY_QUARANTINE_WEBHOOK_URL": hook_url}
        stack.enter_context(_running(gateway, gw_port, gw_env, tmp_path / "gateway.log"))
        for name in ("real", "generated", "hostile_names", "hostile_names"):  # the last one twice: two arrivals
            _store(gw_port, samples[name])
        assert send_cut_short(gw_port, samples["real"], 3000, tmp_path)[0] == 0x0000  # kept: MALFORMED -> quarantine
        assert len(_wait_for_files(pacs_dir, 1)) == 1  # the real image went straight through
        assert run_cli(capsys, "audit", "checkpoint")[0] == 0  # so that the detail page can prove the records

        serve = [*CLI, "serve", "--listen", f"127.0.0.1:{ui_port}", "--checks", "signature"]
        stack.enter_context(_running(serve, ui_port, env, tmp_path / "serve.log"))
        base = f"http://127.0.0.1:{ui_port}"
        api = httpx.Client(base_url=base, timeout=60)
        stack.callback(api.close)

        # The API lists the same quarantine; pick the three instances by what they are.
        listing = api.get("/v1/quarantine", headers={"Authorization": f"Bearer {auditor}"}).json()
        assert listing.get("total") == 3, (listing, (tmp_path / "serve.log").read_text()[-3000:])
        by_kind = {
            ("malformed" if i["verdict"] == "MALFORMED" else "hostile" if i["accession_number"] else "generated"): i
            for i in listing["items"]
        }
        assert set(by_kind) == {"malformed", "hostile", "generated"}
        assert by_kind["hostile"]["arrivals"] == 2 and by_kind["hostile"]["patient_id"] == "P-<b>7</b>"
        assert by_kind["generated"]["channel"] == "gateway" and by_kind["generated"]["ae_title"] == "STORESCU"

        dialogs: list[str] = []
        pw = stack.enter_context(sync_playwright())
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        stack.callback(browser.close)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.set_default_timeout(60_000)  # the first heatmap loads the detector (torch) in the server

        # No session: the token prompt. A look-only token sees everything but cannot act.
        page.goto(f"{base}/ui/quarantine")
        assert "/ui/login" in page.url
        page.screenshot(path=str(shots / "01-token-prompt.png"))
        page.fill("#token", auditor)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{base}/ui/quarantine")
        assert page.locator("tbody tr").count() == 3
        page.goto(f"{base}/ui/quarantine/{by_kind['generated']['id']}", wait_until="domcontentloaded")
        assert page.locator("#look-only").is_visible() and page.locator("#decide").count() == 0
        forbidden = api.post(f"/v1/quarantine/{by_kind['generated']['id']}/release", json={"comment": "no"},
                             headers={"Authorization": f"Bearer {auditor}"})  # fmt: skip
        assert forbidden.status_code == 403
        page.click("text=Log out", no_wait_after=True)
        page.wait_for_url("**/ui/login", wait_until="domcontentloaded")

        # The reviewer logs in on the way to the instance, looks at it with its heatmap, and releases it.
        page.goto(f"{base}/ui/quarantine/{by_kind['generated']['id']}")
        page.fill("#token", reviewer)
        page.click("button[type=submit]")
        page.wait_for_url(f"**/ui/quarantine/{by_kind['generated']['id']}")
        _wait_for_image(page, "#frame")
        _wait_for_image(page, "#heat", timeout=120.0)
        page.focus("#opacity")
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        assert float(page.eval_on_selector("#heat", "e => e.style.opacity")) > 0.4
        assert page.locator("#proof-status").inner_text() == "valid"
        body = page.inner_text("body")
        assert "DECLARED_SYNTHETIC" in body and "Signature" in body and "{" not in body  # labelled, no raw JSON
        page.screenshot(path=str(shots / "02-detail-1280.png"), full_page=True)
        assert reviewer not in page.content() and reviewer not in str(page.context.cookies())  # only a session id
        page.fill("#comment", "Generated test image, sent on purpose for the research PACS")
        page.click("text=Release to")
        page.wait_for_selector("[role=status]")
        assert "Released: now in the gateway's forward queue" in page.inner_text("[role=status]")
        page.screenshot(path=str(shots / "03-released.png"))
        delivered = _wait_for_files(pacs_dir, 2)
        assert len(delivered) == 2, (tmp_path / "gateway.log").read_text()[-3000:]
        uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in delivered}
        assert str(pydicom.dcmread(samples["generated"]).SOPInstanceUID) in uids

        # Tablet width: the list still pages and filters; the hostile file shows an error panel.
        page.set_viewport_size({"width": 768, "height": 1024})
        page.goto(f"{base}/ui/quarantine")
        assert page.locator("tbody tr").count() == 2
        page.screenshot(path=str(shots / "04-list-768.png"), full_page=True)
        page.select_option("select[name=verdict]", "MALFORMED")
        page.click("text=Filter")
        assert page.locator("tbody tr").count() == 1
        page.click("tbody tr a")
        assert page.locator("#render-error").is_visible()
        page.screenshot(path=str(shots / "05-hostile-error.png"), full_page=True)
        page.goto(f"{base}/ui/quarantine")
        assert page.locator("tbody tr").count() == 2

        # Keyboard only: tab to the comment, type, tab to Reject, press Enter.
        page.goto(f"{base}/ui/quarantine/{by_kind['hostile']['id']}")
        assert "<script>alert(1)</script>" in page.inner_text("h1")  # shown as text, never run
        for _ in range(60):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "comment":
                break
        page.keyboard.type("Fake patient name, synthetic image: rejected")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Reject"
        page.keyboard.press("Enter")
        page.wait_for_selector("[role=status]")
        assert "Rejected: now in the rejected store" in page.inner_text("[role=status]")
        assert page.inner_text("#decision").startswith("Rejected by token")
        page.screenshot(path=str(shots / "06-rejected-768.png"), full_page=True)
        assert dialogs == []

        # A second decision on a decided instance is refused, naming who decided.
        again = api.post(f"/v1/quarantine/{by_kind['hostile']['id']}/release", json={"comment": "second try"},
                         headers={"Authorization": f"Bearer {reviewer}"})  # fmt: skip
        assert again.status_code == 409 and "rejected by token" in again.json()["detail"]
        # The CLI sees and decides the rest.
        code, out, _err = run_cli(capsys, "quarantine", "list", "--format", "jsonl")
        assert code == 0 and [row["id"] for row in jsonl(out)] == [by_kind["malformed"]["id"]]
        code, _out, err = run_cli(capsys, "quarantine", "reject", by_kind["malformed"]["id"], "-m", "broken upload")
        assert code == 0 and "rejected" in err, err
        metrics = api.get("/metrics", headers={"Authorization": f"Bearer {auditor}"}).text
        assert 'medverify_quarantine_depth{bin="intake"} 0.0' in metrics
        assert 'action="release",channel="api",event="review",verdict="DECLARED_SYNTHETIC"} 1.0' in metrics
        assert api.get("/metrics").status_code == 401

        # Training: the reviewer starts a session of three images; a trainee with only the link goes through it.
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(f"{base}/ui/train")
        page.fill("#n", "3")
        page.click("text=Start (takes a few seconds)")
        page.wait_for_url("**/ui/train?started=*", timeout=240_000)
        session_id = page.url.rsplit("=", 1)[1]
        trainee = browser.new_page(viewport={"width": 768, "height": 1024})  # no cookie: no token
        trainee.goto(f"{base}/ui/train/s/{session_id}")
        trainee.fill("#name", "Dana Trainee")
        trainee.click("text=Start")
        for i, answer in enumerate(("Real", "Synthetic", "Tampered")):
            _wait_for_image(trainee, "#train-image")
            trainee.click("#train-image", position={"x": 60, "y": 60})
            if i == 0:
                trainee.screenshot(path=str(shots / "07-training-question-768.png"), full_page=True)
            trainee.click(f"button[value={answer.lower()}]")
            trainee.wait_for_selector("#feedback")
            assert "Truth" in trainee.inner_text("#feedback") and "The detector said" in trainee.inner_text("#feedback")
            if i == 0:
                trainee.screenshot(path=str(shots / "08-training-feedback-768.png"), full_page=True)
            trainee.click("#next")
        trainee.wait_for_selector("#results")
        trainee.screenshot(path=str(shots / "09-training-results.png"), full_page=True)
        page.goto(f"{base}/ui/train")
        assert "Dana Trainee" in page.inner_text("tbody") and "3 of 3" in page.inner_text("tbody")
        page.screenshot(path=str(shots / "10-trainer.png"), full_page=True)

    rejected = json.loads((home / "quarantine" / "rejected" / f"{by_kind['hostile']['sha256']}.json").read_text())
    assert rejected["arrivals"][0]["audit_id"] == rejected["audit_id"]
    assert len({a["audit_id"] for a in rejected["arrivals"]}) == 2 and rejected["accession_number"] == "ACC-0042"
    with AuditLog.open(f"sqlite:///{home / 'audit.db'}") as log:
        reviews = [r.entry for r in log.query(event="review")]
    assert [(r.action, r.api_token_id, r.channel.value) for r in reviews] == [
        ("release", reviewer_id, "api"), ("reject", reviewer_id, "api"), ("reject", None, "cli"),
    ]  # fmt: skip
    assert reviews[0].details["review"]["comment"].startswith("Generated test image")
    assert len(hooks) == 4 and all("patient_name" not in h and h["event"] == "quarantined" for h in hooks)
    session = json.loads((home / "training" / session_id / "session.json").read_text())
    assert sorted(i["kind"] for i in session["items"]) == ["real", "synthetic", "tampered"]
    assert [i["answer"] for i in session["items"]] == ["real", "synthetic", "tampered"]
    for fake in (home / "training" / session_id).glob("item-*.dcm"):  # declared, signed, like every generated image
        ds = pydicom.dcmread(fake)
        assert ds.ImageType[0] == "DERIVED" and ds.DerivationCodeSequence[0].CodeValue and ds.SourceImageSequence
        assert "DigitalSignaturesSequence" in ds
    for log_file in ("serve.log", "gateway.log"):
        assert reviewer not in (tmp_path / log_file).read_text()
