"""Where the application is put together: from :class:`~verifier.settings.Settings` to the key store, the audit
log, the trust policy and the one :class:`~verifier.checker.Checker`.

Every entry point (the CLI commands, the DICOM gateway, the Orthanc plugin, the HTTP API) builds what it uses
here, so that a file gets the same checks, trust and site policy wherever it arrives. Nothing here parses options
or prints, and nothing imports the CLI: what first use creates is told through a ``notify`` callback. The key store
is created on first use (:func:`init_keys`); a check that cannot run is reported as not run
(:attr:`~verifier.checker.Checker.not_run`); what is wrong in the configuration (an unreadable trust anchor, a
``--model`` that is not a bundle) is an error here, before the first file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from provenance.errors import KeyStoreError, ProvenanceError
from provenance.keys import (
    PASSPHRASE_ENV,
    KeyAlgorithm,
    KeyInfo,
    KeyRole,
    KeyStore,
    create_passphrase_file,
    passphrase_source,
)
from provenance.trust import TrustPolicy, TrustStatus, load_certificates
from provenance.watermark import WatermarkKey
from verifier.errors import AuditError, InputError
from verifier.policy import load_policy
from verifier.settings import Settings

if TYPE_CHECKING:  # SQLAlchemy is imported only when the audit log is opened, pydicom only when files are checked
    from verifier.api.storage import InstanceStore
    from verifier.audit import AuditLog, CheckpointSigner, TrustedCertificates
    from verifier.checker import Check, Checker
    from verifier.generation import GenerationKeys
    from verifier.intake.decide import Intake
    from verifier.intake.webhook import Webhook
    from verifier.review.config import ReviewConfig
    from verifier.review.desk import ReviewDesk

__all__ = [
    "AUDIT_KEY_NAME",
    "KeysCreated",
    "checkpoint_signers",
    "init_keys",
    "load_audit_signer",
    "load_checker",
    "load_trust_policy",
    "open_audit_log",
    "open_generation_keys",
    "open_intake",
    "open_keystore",
    "open_review",
    "open_review_desk",
    "passphrase_file_path",
    "private_home",
    "quarantine_webhook",
    "shipped_detector_bundle",
]

#: Told what first use created (one line, for stderr or a service log).
Notify = Callable[[str], None]

#: Name of the key-store key that signs audit checkpoints and evidence packages (role ``audit``, made on first use).
AUDIT_KEY_NAME = "audit"


# ---------------------------------------------------------------------------------------------- keys and trust


def passphrase_file_path(settings: Settings) -> Path:
    """The passphrase file: the ``key_passphrase_file`` setting, else ``keys_dir/passphrase``."""
    return settings.key_passphrase_file or settings.keys_dir / "passphrase"


def open_keystore(settings: Settings, *, interactive: bool = True) -> KeyStore:
    """The key store in ``settings.keys_dir``, asking for its passphrase only when a private key is needed.

    The passphrase comes from ``MEDVERIFY_KEY_PASSPHRASE``, then the passphrase file (the
    ``key_passphrase_file`` setting, else ``keys_dir/passphrase`` if it exists), then, if ``interactive`` and
    standard input is a terminal, a prompt.
    """
    source = passphrase_source(passphrase_file=passphrase_file_path(settings), interactive=interactive)
    return KeyStore(settings.keys_dir, source)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeysCreated:
    """What :func:`init_keys` created on first use: the key store, its first keys, and the passphrase file it
    wrote when no passphrase was configured."""

    directory: Path
    keys: tuple[KeyInfo, ...]
    passphrase_file: Path | None

    def message(self) -> str:
        """The one line that tells the user, once, what was created and where."""
        keys = ", ".join(f"{k.name} ({k.role.value})" for k in self.keys) or "no signing key"
        text = f"first use: created the key store {self.directory} (local CA; keys: {keys})"
        if self.passphrase_file is not None:
            text += (
                f"; no key passphrase was configured, so a random one was written to {self.passphrase_file} "
                f"(0600). In production set {PASSPHRASE_ENV} or answer the prompt of `medverify keys init`"
            )
        return text


def init_keys(
    settings: Settings, *, interactive: bool = False, store: KeyStore | None = None
) -> KeysCreated | None:
    """Create the key store (local CA and the default generator key) if it does not exist yet; None if it does.

    Run by every command that needs keys, as the demo does. The passphrase comes from where
    :func:`open_keystore` finds it (``interactive``: a prompt when standard input is a terminal); when there is
    none, a random one is written to the passphrase file (mode 0600, next to the keys unless the
    ``key_passphrase_file`` setting says elsewhere), so that a first run never stops to ask. ``store``: the
    caller's own :func:`open_keystore`, so that a prompted passphrase is asked for once.
    """
    private_home(settings)
    try:
        KeyStore(settings.keys_dir, _no_passphrase).ca_certificate()
        return None
    except KeyStoreError:
        pass  # not initialised yet
    file = passphrase_file_path(settings)
    generated = None
    prompt = interactive and sys.stdin is not None and sys.stdin.isatty()
    if not os.environ.get(PASSPHRASE_ENV) and not file.exists() and not prompt:
        try:
            create_passphrase_file(file)
            generated = file
        except KeyStoreError:  # another first use wrote it first: use its passphrase
            if not file.exists():
                raise
    created = (store or open_keystore(settings, interactive=interactive)).init()
    return KeysCreated(directory=settings.keys_dir, keys=tuple(created), passphrase_file=generated)


def private_home(settings: Settings) -> None:
    """Create the medverify home (keys, audit database, spool, quarantine) readable by its owner only (0700).
    An existing home is left as it is: an administrator may have set its mode on purpose."""
    try:
        if not settings.home.exists():
            settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the medverify home {settings.home}: {exc.strerror}") from exc


def _first_use(settings: Settings, notify: Notify | None) -> None:
    created = init_keys(settings)
    if created is not None and notify is not None:
        notify(created.message())


def load_trust_policy(settings: Settings, extra: Sequence[Path] = ()) -> TrustPolicy:
    """The key store's trust policy (local CA, trusted certificates, revocations) plus ``extra`` anchors."""
    anchors = []
    for path in extra:
        try:
            anchors.extend(load_certificates(Path(path).read_bytes()))
        except OSError as exc:
            raise InputError(f"cannot read trust anchor file {path}: {exc.strerror}") from exc
    store = KeyStore(settings.keys_dir, _no_passphrase)
    try:
        policy = store.trust_policy()
    except KeyStoreError:
        if not anchors:
            raise InputError(
                "no trusted certificates: run `medverify keys init` (or `keys trust CERT`), or pass --trust CA.pem"
            ) from None
        return TrustPolicy(anchors=anchors)
    return policy.with_extra_anchors(anchors) if anchors else policy


def _no_passphrase() -> bytes:  # pragma: no cover - trust evaluation never needs a private key
    raise KeyStoreError("verification does not use private keys")


def open_generation_keys(
    settings: Settings, key: str = "generator", *, notify: Notify | None = None
) -> GenerationKeys:
    """What generated images are written with: signing key ``key`` (role generator; the key store is initialised
    and the key created on first use), the current watermark key (likewise) and the audit log."""
    from verifier.generation import GenerationKeys

    store = open_keystore(settings)
    created = init_keys(settings, interactive=True, store=store)
    if created is not None and notify is not None:
        notify(created.message())
    info = store.ensure(key, KeyRole.GENERATOR)
    if info.role is not KeyRole.GENERATOR:
        raise InputError(f"key {key!r} has role {info.role.value}; generated images are signed by a generator key")
    return GenerationKeys(
        signer=store.load_signing_key(key),
        key_name=key,
        watermark_key=store.watermark_key(),
        log=open_audit_log(settings),
    )


# ---------------------------------------------------------------------------------------------- the audit log


def load_audit_signer(settings: Settings, *, interactive: bool) -> CheckpointSigner:
    """The ``audit`` key of the key store (created there if missing), which signs checkpoints and packages."""
    store = open_keystore(settings, interactive=interactive)
    store.ensure(AUDIT_KEY_NAME, KeyRole.AUDIT, KeyAlgorithm.ECDSA_P256)
    key: CheckpointSigner = store.load_signing_key(AUDIT_KEY_NAME)
    return key


def open_audit_log(
    settings: Settings,
    *,
    db: str | None = None,
    signer: bool | None = None,
    interactive: bool = False,
) -> AuditLog:
    """The audit log of ``settings`` (or at ``db``), created and migrated on first use.

    ``signer``: ``True`` requires the ``audit`` key (created in the key store if missing), ``None`` uses it
    when the key store passphrase is available without asking, ``False`` never loads it. Without the key, no
    checkpoint is written automatically; ``medverify audit checkpoint`` signs the head later.
    """
    from verifier.audit import AuditLog

    private_home(settings)
    checkpoint_signer: CheckpointSigner | None = None
    if signer is not False:
        try:
            checkpoint_signer = load_audit_signer(settings, interactive=interactive)
        except ModuleNotFoundError:
            if signer:
                raise AuditError(
                    "the key store (provenance.keys) is not installed; cannot sign checkpoints"
                ) from None
        except ProvenanceError:
            if signer:
                raise
    return AuditLog.open(
        db or settings.database_url,
        checkpoint_signer=checkpoint_signer,
        checkpoint_interval=settings.checkpoint_interval,
    )


def checkpoint_signers(
    settings: Settings, certs: Sequence[Path] | None, *, create: bool = False, notify: Notify | None = None
) -> TrustedCertificates:
    """Who may sign audit checkpoints and evidence packages: the certificates in ``certs`` (PEM) if given, else
    the ``audit`` keys the local key store's trust policy trusts at the time of signing. With ``create`` the key
    store is created on first use (checking this home's own log); without, a missing one is an error (checking a
    proof or package from elsewhere needs the signer's certificate)."""
    if certs:
        pinned: list[x509.Certificate] = []
        for path in certs:
            try:
                pinned.append(x509.load_pem_x509_certificate(path.read_bytes()))
            except OSError as error:
                raise InputError(f"cannot read certificate {path}: {error.strerror}") from error
            except ValueError as error:
                raise InputError(f"{path} is not a PEM certificate") from error
        return pinned
    if create:
        _first_use(settings, notify)
    elif not settings.keys_dir.is_dir():
        raise InputError(f"no key store at {settings.keys_dir}; give the checkpoint signer with --trust-cert")
    policy = open_keystore(settings, interactive=False).trust_policy()

    def trusted(cert: x509.Certificate, signed_at: dt.datetime) -> bool:
        decision = policy.evaluate(cert, at=signed_at)
        return decision.status == TrustStatus.TRUSTED and decision.role in (None, KeyRole.AUDIT)

    return trusted


# ---------------------------------------------------------------------------------------------- the checks


def shipped_detector_bundle() -> Path | None:
    """The detector bundle that ships in the package, if there is one."""
    import detectors

    bundle = Path(detectors.__file__).parent / "checkpoints" / "detector"
    return bundle if (bundle / "config.json").is_file() else None


def load_checker(
    settings: Settings,
    checks: str | None = None,
    *,
    trust: Sequence[Path] = (),
    policy_file: Path | None = None,
    model: Path | None = None,
    heatmaps: Path | None = None,
    default: frozenset[Check] | None = None,
    notify: Notify | None = None,
) -> Checker:
    """The :class:`~verifier.checker.Checker` of the checks named by ``checks`` (a ``--checks`` value; not given:
    ``default``, else every check), with what they need; the key store is created on first use.

    A check that cannot run here (no watermark key yet, no key passphrase without asking, no detector model or no
    torch) is not run, and every result says why; nothing stops. No private key is needed: the watermark keys are
    read only when the passphrase is at hand without a prompt.

    ``trust``: extra trust anchors (PEM files); ``policy_file``: the site policy (default: the ``policy_file``
    setting, else the built-in one); ``model``: the detector bundle (default: the ``detector_model`` setting,
    else the shipped one), loaded by the first detector check of each process; ``heatmaps``: where the detector
    writes a heatmap per file; ``notify``: told, once, what first use created.
    """
    from verifier.checker import DEFAULT_CHECKS, Check, Checker, parse_checks
    from verifier.detection import DetectorSetup

    selected = parse_checks(checks, DEFAULT_CHECKS if default is None else default)
    _first_use(settings, notify)
    not_run: dict[Check, str] = {}
    keys: tuple[WatermarkKey, ...] = ()
    if Check.WATERMARK in selected:
        keys, why = _watermark_keys(settings)
        if why is not None:
            not_run[Check.WATERMARK] = why
    detector = None
    if Check.DETECTOR in selected:
        bundle = model or settings.detector_model
        if bundle is not None and not (bundle / "config.json").is_file():
            raise InputError(f"--model {bundle}: not a detector bundle (no config.json)")
        why = _detector_missing(bundle)
        if why is None:
            detector = DetectorSetup(model=bundle, heatmap_dir=heatmaps)
        else:
            not_run[Check.DETECTOR] = why
    elif model is not None or heatmaps is not None:
        raise InputError("--model and --heatmaps need the detector check (--checks signature,detector)")
    return Checker(
        checks=selected - set(not_run),
        not_run=not_run,
        trust=load_trust_policy(settings, trust),
        site_policy=load_policy(policy_file or settings.policy_file),
        watermark_keys=keys,
        detector=detector,
    )


def _watermark_keys(settings: Settings) -> tuple[tuple[WatermarkKey, ...], str | None]:
    """The watermark keys, or why the watermark check cannot run: they are secrets, sealed with the key
    passphrase, which a check never prompts for."""
    try:
        keys = tuple(open_keystore(settings, interactive=False).watermark_keys())
    except KeyStoreError as exc:  # PassphraseError among them; the message never holds key material
        return (), f"the watermark keys cannot be opened: {exc}"
    if not keys:
        return (), "no watermark key yet (`medverify watermark rotate` or `medverify generate` makes one)"
    return keys, None


def _detector_missing(bundle: Path | None) -> str | None:
    """Why the detector check cannot run (no model bundle, no torch), or None."""
    if bundle is None and shipped_detector_bundle() is None:
        return "no detector model: this installation ships none; give one with --model or the detector_model setting"
    if importlib.util.find_spec("torch") is None:
        return "the detector needs torch, which is not installed"
    return None


def open_intake(
    settings: Settings,
    checks: str | None = None,
    *,
    trust: Sequence[Path] = (),
    policy_file: Path | None = None,
    model: Path | None = None,
    db: str | None = None,
    audit: bool = True,
    notify: Notify | None = None,
    reload_channel: str | None = None,
) -> Intake:
    """What the intake channels (DICOM gateway, Orthanc plugin, HTTP API) check and record with.

    The checker is the one ``medverify verify`` would build (same trust policy, site policy and keys), except that
    with no ``checks`` it runs :data:`~verifier.checker.INTAKE_DEFAULT_CHECKS` (signature and watermark: the
    detector is opt-in at intake until it meets its false-positive target). The detector model, if any, is loaded
    now, and with ``audit`` the audit log is opened (and created) now: whatever is missing is an error here, so that
    a channel that cannot check or record refuses to start rather than every upload.

    ``reload_channel`` (``api``, ``intake``): take changes of the trust store, revocations and site policy in while
    running, each recorded on that channel (:class:`~verifier.intake.reload.CheckerReloader`).
    """
    from verifier.checker import INTAKE_DEFAULT_CHECKS
    from verifier.intake.decide import Intake

    checker = load_checker(
        settings, checks, trust=trust, policy_file=policy_file, model=model, default=INTAKE_DEFAULT_CHECKS,
        notify=notify,
    )  # fmt: skip
    if checker.detector is not None:
        checker.detector.load()  # torch and the weights now, not in the first sender's C-STORE
    audit_log = open_audit_log(settings, db=db) if audit else None
    reloader = None
    if reload_channel is not None:
        from verifier.audit import Channel
        from verifier.intake.reload import CheckerReloader

        reloader = CheckerReloader(
            settings, trust=trust, policy_file=policy_file, audit_log=audit_log, channel=Channel(reload_channel)
        )
    return Intake(checker, audit_log=audit_log, reloader=reloader)


def quarantine_webhook(settings: Settings) -> Webhook | None:
    """The webhook told of every quarantined instance (``quarantine_webhook_url``), or None when none is set."""
    if not settings.quarantine_webhook_url:
        return None
    from verifier.intake.webhook import Webhook

    return Webhook(settings.quarantine_webhook_url)


def open_review(
    settings: Settings,
    intake: Intake,
    *,
    quarantine: Path | None = None,
    gateway_spool: Path | None = None,
    stow_store: InstanceStore | None = None,
    stow_spool: Path | None = None,
) -> ReviewConfig:
    """What the review pages and /v1/quarantine serve with: the quarantine bins (the gateway's and Orthanc plugin's
    directory, the STOW-RS store's), where releases go, the detector that draws heatmaps (the intake's, else the
    configured or shipped bundle, loaded at the first heatmap), and who may sign the audit checkpoints."""
    from verifier.detection import DetectorSetup
    from verifier.review.config import ReviewConfig

    if intake.audit_log is None:
        raise AuditError("the quarantine review needs the audit log")
    desk = open_review_desk(settings, intake.audit_log, quarantine=quarantine, gateway_spool=gateway_spool,
                            stow_store=stow_store, stow_spool=stow_spool)  # fmt: skip
    detector = intake.checker.detector
    if detector is None and (settings.detector_model is not None or shipped_detector_bundle() is not None):
        detector = DetectorSetup(model=settings.detector_model)
    trusted = checkpoint_signers(settings, None) if settings.keys_dir.is_dir() else None
    training = None
    if settings.training_corpus is not None and detector is not None:
        from verifier.review.training import TrainingStore

        training = TrainingStore(settings.home / "training", settings.training_corpus)
    return ReviewConfig(desk=desk, detector=detector, trusted=trusted, training=training, settings=settings)


def open_review_desk(
    settings: Settings,
    audit_log: AuditLog,
    *,
    quarantine: Path | None = None,
    gateway_spool: Path | None = None,
    stow_store: InstanceStore | None = None,
    stow_spool: Path | None = None,
) -> ReviewDesk:
    """The quarantine bins and where releases go: the gateway's and Orthanc plugin's quarantine directory (default:
    the ``intake_quarantine_dir`` setting, else ``home/quarantine``), the gateway's spool (likewise
    ``intake_spool_dir``, else ``home/spool``) and, with ``stow_store``, the STOW-RS store."""
    from verifier.review.desk import ReviewDesk
    from verifier.review.orthanc import orthanc_poster

    return ReviewDesk(
        orthanc_release=orthanc_poster(settings.orthanc_url) if settings.orthanc_url else None,
        audit_log=audit_log,
        intake_quarantine=quarantine or settings.intake_quarantine_dir or settings.home / "quarantine",
        gateway_spool=gateway_spool or settings.intake_spool_dir or settings.home / "spool",
        stow_store=stow_store,
        stow_spool=stow_spool,
    )
