"""Where the application is put together: from :class:`~verifier.settings.Settings` to the key store, the audit
log, the trust policy and the one :class:`~verifier.checker.Checker`.

Every entry point (the CLI commands, the DICOM gateway, the Orthanc plugin, the HTTP API) builds what it uses
here, so that a file gets the same checks, trust and site policy wherever it arrives. Nothing here parses options
or prints, and nothing imports the CLI. What is missing (a key, a trust anchor, a detector model) is an error here,
before the first file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from provenance.errors import KeyStoreError, ProvenanceError
from provenance.keys import KeyAlgorithm, KeyRole, KeyStore, passphrase_source
from provenance.trust import TrustPolicy, TrustStatus, load_certificates
from provenance.watermark import WatermarkKey
from verifier.errors import AuditError, InputError
from verifier.policy import load_policy
from verifier.settings import Settings

if TYPE_CHECKING:  # SQLAlchemy is imported only when the audit log is opened, pydicom only when files are checked
    from verifier.api.storage import InstanceStore
    from verifier.audit import AuditLog, CheckpointSigner, TrustedCertificates
    from verifier.checker import Checker
    from verifier.generation import GenerationKeys
    from verifier.intake.decide import Intake
    from verifier.intake.webhook import Webhook
    from verifier.review.config import ReviewConfig
    from verifier.review.desk import ReviewDesk

__all__ = [
    "AUDIT_KEY_NAME",
    "checkpoint_signers",
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
    "quarantine_webhook",
    "shipped_detector_bundle",
]

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


def open_generation_keys(settings: Settings, key: str = "generator") -> GenerationKeys:
    """What generated images are written with: signing key ``key`` (role generator; the key store is initialised
    and the key created on first use), the current watermark key (likewise) and the audit log."""
    from verifier.generation import GenerationKeys

    store = open_keystore(settings)
    store.init()
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


def checkpoint_signers(settings: Settings, certs: Sequence[Path] | None) -> TrustedCertificates:
    """Who may sign audit checkpoints and evidence packages: the certificates in ``certs`` (PEM) if given, else
    the ``audit`` keys the local key store's trust policy trusts at the time of signing."""
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
    if not settings.keys_dir.is_dir():
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
) -> Checker:
    """The :class:`~verifier.checker.Checker` of the checks named by ``checks`` (a ``--checks`` value; default:
    signature), with what they need.

    ``trust``: extra trust anchors (PEM files); ``policy_file``: the site policy (default: the ``policy_file``
    setting, else the built-in one); ``model``: the detector bundle (default: the ``detector_model`` setting,
    else the shipped one), loaded by the first detector check of each process; ``heatmaps``: where the detector
    writes a heatmap per file.
    """
    from verifier.checker import Check, Checker, parse_checks
    from verifier.detection import DetectorSetup

    selected = parse_checks(checks)
    keys: tuple[WatermarkKey, ...] = ()
    if Check.WATERMARK in selected:
        # The watermark keys are secrets: detection needs the key store's passphrase.
        keys = tuple(open_keystore(settings).watermark_keys())
        if not keys:
            raise InputError(
                "--checks watermark: the key store has no watermark key yet (medverify generate makes one)"
            )
    detector = None
    if Check.DETECTOR in selected:
        bundle = model or settings.detector_model
        if bundle is not None and not (bundle / "config.json").is_file():
            raise InputError(f"--model {bundle}: not a detector bundle (no config.json)")
        if bundle is None and shipped_detector_bundle() is None:
            raise InputError("no detector model: the package ships none; pass --model BUNDLE")
        detector = DetectorSetup(model=bundle, heatmap_dir=heatmaps)
    elif model is not None or heatmaps is not None:
        raise InputError("--model and --heatmaps need the detector check (--checks signature,detector)")
    return Checker(
        checks=selected,
        trust=load_trust_policy(settings, trust),
        site_policy=load_policy(policy_file or settings.policy_file),
        watermark_keys=keys,
        detector=detector,
    )


def open_intake(
    settings: Settings,
    checks: str | None = None,
    *,
    trust: Sequence[Path] = (),
    policy_file: Path | None = None,
    model: Path | None = None,
    db: str | None = None,
    audit: bool = True,
) -> Intake:
    """What the intake channels (DICOM gateway, Orthanc plugin, HTTP API) check and record with.

    The checker is the one ``medverify verify`` would build (same trust policy, site policy and keys); the detector
    model, if any, is loaded now, and with ``audit`` the audit log is opened (and created) now: whatever is missing
    is an error here, so that a channel that cannot check or record refuses to start rather than every upload.
    """
    from verifier.intake.decide import Intake

    checker = load_checker(settings, checks, trust=trust, policy_file=policy_file, model=model)
    if checker.detector is not None:
        checker.detector.load()  # torch and the weights now, not in the first sender's C-STORE
    return Intake(checker, audit_log=open_audit_log(settings, db=db) if audit else None)


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
