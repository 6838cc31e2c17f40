"""KeyStore, passphrases and certificates, on real files in tmp_path."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from provenance.errors import KeyStoreError, PassphraseError
from provenance.keys import (
    ROLE_OIDS,
    KeyAlgorithm,
    KeyRole,
    KeyStore,
    create_passphrase_file,
    passphrase_source,
    role_of_certificate,
)
from provenance.trust import TrustStatus


def _refuse() -> bytes:
    raise AssertionError("the passphrase must not be asked for")


# ---- init


def test_init_creates_ca_and_default_key_once(tmp_path: Path, key_passphrase: str) -> None:
    store = KeyStore(tmp_path / "keys", lambda: key_passphrase.encode())
    created = store.init()
    assert [(i.name, i.role, i.algorithm, i.status) for i in created] == [
        ("generator", KeyRole.GENERATOR, KeyAlgorithm.RSA_3072, "active")
    ]
    ca_before = store.ca_certificate()
    index_before = (tmp_path / "keys" / "index.json").read_bytes()
    assert store.init() == []
    assert store.ca_certificate() == ca_before
    assert (tmp_path / "keys" / "index.json").read_bytes() == index_before
    assert [i.serial for i in store.list()] == [created[0].serial]


def test_ca_certificate_profile(keystore: KeyStore) -> None:
    ca = keystore.ca_certificate()
    assert ca.subject == ca.issuer
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    public_key = ca.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 3072
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3652)
    assert keystore.export_certificate("ca") == ca.public_bytes(serialization.Encoding.PEM)


def test_files_are_0600_and_directories_0700(keystore: KeyStore, keystore_dir: Path) -> None:
    keystore.create("acq", KeyRole.ACQUISITION, KeyAlgorithm.ECDSA_P256)
    keystore.revoke("acq")
    seen_files = 0
    for root, _dirs, files in os.walk(keystore_dir):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700, root
        for name in files:
            assert stat.S_IMODE(os.stat(Path(root, name)).st_mode) == 0o600, name
            seen_files += 1
    assert seen_files >= 8  # index, revoked, lock, CA pair, two key pairs


def test_fresh_store_directory_is_0700_even_with_a_lax_umask(tmp_path: Path, key_passphrase: str) -> None:
    old = os.umask(0o022)
    try:
        KeyStore(tmp_path / "a" / "keys", lambda: key_passphrase.encode()).init()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "keys").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "keys" / "ca" / "ca.key.pem").st_mode) == 0o600


def test_private_keys_are_encrypted_at_rest(
    keystore: KeyStore, keystore_dir: Path, key_passphrase: str
) -> None:
    keystore.create("ec", KeyRole.AUDIT, KeyAlgorithm.ECDSA_P256)
    key_files = sorted(keystore_dir.rglob("*.key.pem"))
    assert len(key_files) == 3  # CA, generator, ec
    for path in key_files:
        data = path.read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(data, password=None)
        serialization.load_pem_private_key(data, password=key_passphrase.encode())


def test_wrong_passphrase_is_a_passphrase_error_without_the_secret(
    keystore_dir: Path, key_passphrase: str
) -> None:
    guess = "wrong-guess-Hy7Q2"
    store = KeyStore(keystore_dir, lambda: guess.encode())
    with pytest.raises(PassphraseError) as info:
        store.load_signing_key("generator")
    for text in (str(info.value), info.value.diagnostics(), repr(info.value)):
        assert guess not in text
        assert key_passphrase not in text
    assert "passphrase" in str(info.value)
    with pytest.raises(PassphraseError):  # issuing needs the CA key, so it fails the same way
        store.create("other", KeyRole.AUDIT, KeyAlgorithm.ECDSA_P256)
    assert not (keystore_dir / "signing" / "other").exists()


def test_public_operations_never_ask_for_the_passphrase(keystore_dir: Path) -> None:
    store = KeyStore(keystore_dir, _refuse)
    assert store.info("generator").status == "active"
    assert len(store.list()) == 1
    cert = store.certificate("generator")
    assert store.trust_policy().evaluate(cert).status is TrustStatus.TRUSTED
    assert b"BEGIN CERTIFICATE" in store.export_certificate("generator")
    store.revoke("generator")  # revocation is a public act too


def test_tampered_key_file_permissions_are_refused(keystore: KeyStore, keystore_dir: Path) -> None:
    key_file = next((keystore_dir / "signing" / "generator").glob("*.key.pem"))
    key_file.chmod(0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        keystore.load_signing_key("generator")


# ---- passphrases


def test_passphrase_source_prefers_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    create_passphrase_file(path)
    from_file = path.read_bytes().strip()
    assert (
        passphrase_source(env={"MEDVERIFY_KEY_PASSPHRASE": "from-env"}, passphrase_file=path)() == b"from-env"
    )
    assert passphrase_source(env={}, passphrase_file=path)() == from_file
    assert len(from_file) >= 40


def test_passphrase_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    path.write_text("hunter2-lax-mode\n")
    path.chmod(0o640)
    with pytest.raises(PassphraseError, match="group or others") as info:
        passphrase_source(env={}, passphrase_file=path)()
    assert "hunter2" not in str(info.value)
    path.chmod(0o600)
    assert passphrase_source(env={}, passphrase_file=path)() == b"hunter2-lax-mode"


def test_no_passphrase_anywhere_explains_how_to_provide_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    source = passphrase_source(env={}, passphrase_file=tmp_path / "absent", interactive=True)
    with pytest.raises(PassphraseError, match="MEDVERIFY_KEY_PASSPHRASE"):
        source()


def test_interactive_prompt_is_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeTerminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return "typed-secret"

    monkeypatch.setattr(sys, "stdin", FakeTerminal(""))
    monkeypatch.setattr("getpass.getpass", fake_getpass)
    source = passphrase_source(env={}, interactive=True)
    assert prompts == []  # lazy: nothing asked before a key is needed
    assert source() == b"typed-secret"
    assert source() == b"typed-secret"
    assert len(prompts) == 1
    assert "typed-secret" not in prompts[0]
    with pytest.raises(PassphraseError):
        passphrase_source(env={}, interactive=False)()


def test_create_passphrase_file_is_exclusive_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "passphrase"
    create_passphrase_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    first = path.read_bytes()
    with pytest.raises(KeyStoreError):
        create_passphrase_file(path)
    assert path.read_bytes() == first
    assert [p.name for p in path.parent.iterdir()] == ["passphrase"]  # no temporary files left behind


# ---- certificates


def test_signing_certificate_profile(keystore: KeyStore) -> None:
    info = keystore.create("scanner-1", KeyRole.ACQUISITION, KeyAlgorithm.RSA_2048, validity_days=30)
    cert = keystore.certificate("scanner-1")
    ca = keystore.ca_certificate()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "scanner-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "medverify"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "acquisition"
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.content_commitment
    assert not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical and list(eku.value) == [ROLE_OIDS[KeyRole.ACQUISITION]]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    now = dt.datetime.now(dt.UTC)
    assert now - dt.timedelta(minutes=6) < cert.not_valid_before_utc < now - dt.timedelta(minutes=4)
    assert cert.not_valid_after_utc - now < dt.timedelta(days=30, minutes=1)
    assert info.serial == cert.serial_number
    assert info.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert info.subject == cert.subject.rfc4514_string()


def test_role_oids_are_distinct_and_under_one_uuid_arc() -> None:
    dotted = [oid.dotted_string for oid in ROLE_OIDS.values()]
    assert len(set(dotted)) == len(KeyRole) == 3
    arcs = {d.rsplit(".", 1)[0] for d in dotted}
    assert len(arcs) == 1 and next(iter(arcs)).startswith("2.25.")


@pytest.mark.parametrize("role", list(KeyRole))
def test_role_is_readable_from_the_certificate(keystore: KeyStore, role: KeyRole) -> None:
    keystore.create(f"k-{role}", role, KeyAlgorithm.ECDSA_P256)
    assert role_of_certificate(keystore.certificate(f"k-{role}")) is role
    assert role_of_certificate(keystore.ca_certificate()) is None


@pytest.mark.parametrize(
    ("algorithm", "key_type", "size"),
    [
        (KeyAlgorithm.RSA_2048, rsa.RSAPrivateKey, 2048),
        (KeyAlgorithm.ECDSA_P256, ec.EllipticCurvePrivateKey, 256),
    ],
)
def test_algorithms(keystore: KeyStore, algorithm: KeyAlgorithm, key_type: type, size: int) -> None:
    info = keystore.create("k", KeyRole.GENERATOR, algorithm)
    assert info.algorithm is algorithm
    signing = keystore.load_signing_key("k")
    assert isinstance(signing.private_key, key_type)
    assert signing.private_key.key_size == size
    assert signing.algorithm is algorithm
    message = b"pixel data"
    public = signing.certificate.public_key()
    if isinstance(signing.private_key, rsa.RSAPrivateKey):
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(
            signing.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256()),
            message,
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(
            signing.private_key.sign(message, ec.ECDSA(hashes.SHA256())), message, ec.ECDSA(hashes.SHA256())
        )


def test_default_key_is_rsa_3072(keystore: KeyStore) -> None:
    signing = keystore.load_signing_key("generator")
    assert signing.role is KeyRole.GENERATOR
    assert isinstance(signing.private_key, rsa.RSAPrivateKey) and signing.private_key.key_size == 3072


def test_signing_key_repr_hides_the_private_key(keystore: KeyStore) -> None:
    text = repr(keystore.load_signing_key("generator"))
    assert "private_key" not in text
    assert "PRIVATE" not in text
    assert "generator" in text


# ---- names, create, ensure


@pytest.mark.parametrize("name", ["../evil", "Upper", "", "-dash", "a/b", "x" * 65, "ca", "a b", "é"])
def test_invalid_names_are_refused(keystore: KeyStore, keystore_dir: Path, name: str) -> None:
    before = sorted(p.relative_to(keystore_dir) for p in keystore_dir.rglob("*"))
    with pytest.raises(KeyStoreError):
        keystore.create(name, KeyRole.AUDIT, KeyAlgorithm.ECDSA_P256)
    assert sorted(p.relative_to(keystore_dir) for p in keystore_dir.rglob("*")) == before


def test_duplicate_name_is_refused(keystore: KeyStore) -> None:
    keystore.create("dup", KeyRole.AUDIT, KeyAlgorithm.ECDSA_P256)
    with pytest.raises(KeyStoreError, match="already exists"):
        keystore.create("dup", KeyRole.AUDIT, KeyAlgorithm.ECDSA_P256)


def test_unknown_key_and_uninitialised_store(tmp_path: Path, keystore: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="no key named"):
        keystore.info("missing")
    empty = KeyStore(tmp_path / "nothing", _refuse)
    with pytest.raises(KeyStoreError, match="not initialised"):
        empty.create("k", KeyRole.AUDIT)
    with pytest.raises(KeyStoreError, match="not initialised"):
        empty.revoke("k")
    with pytest.raises(KeyStoreError, match="not initialised"):
        empty.trust_policy()
    assert empty.list() == []
    assert not (tmp_path / "nothing").exists()


def test_ensure(keystore: KeyStore, tmp_path: Path, key_passphrase: str) -> None:
    existing = keystore.ensure("generator", KeyRole.GENERATOR)
    assert existing == keystore.info("generator")
    made = keystore.ensure("audit-1", KeyRole.AUDIT, KeyAlgorithm.ECDSA_P256)
    assert made.role is KeyRole.AUDIT and made.algorithm is KeyAlgorithm.ECDSA_P256
    assert keystore.ensure("audit-1", KeyRole.AUDIT, KeyAlgorithm.ECDSA_P256).serial == made.serial
    with pytest.raises(KeyStoreError, match="role"):
        keystore.ensure("audit-1", KeyRole.GENERATOR)
    fresh = KeyStore(tmp_path / "fresh", lambda: key_passphrase.encode())
    info = fresh.ensure("acq", KeyRole.ACQUISITION, KeyAlgorithm.ECDSA_P256)
    assert info.role is KeyRole.ACQUISITION
    assert {i.name for i in fresh.list()} == {"generator", "acq"}  # ensure initialised the store


# ---- revoke, rotate


def test_revoke(keystore: KeyStore, keystore_dir: Path) -> None:
    cert = keystore.certificate("generator")
    assert keystore.trust_policy().evaluate(cert).status is TrustStatus.TRUSTED
    info = keystore.revoke("generator")
    assert info.status == "revoked" and info.serial == cert.serial_number
    with pytest.raises(KeyStoreError, match="revoked") as raised:
        keystore.load_signing_key("generator")
    assert not isinstance(raised.value, PassphraseError)
    assert keystore.trust_policy().evaluate(cert).status is TrustStatus.REVOKED
    assert keystore.revoke("generator") == info  # idempotent
    recorded = json.loads((keystore_dir / "revoked.json").read_text())["revoked"]
    assert [(r["serial"], r["issuer"]) for r in recorded] == [
        (cert.serial_number, cert.issuer.rfc4514_string())
    ]


def test_rotate(keystore: KeyStore) -> None:
    old = keystore.info("generator")
    old_cert = keystore.certificate("generator")
    new = keystore.rotate("generator")
    assert new.serial != old.serial
    assert (new.name, new.role, new.algorithm, new.status) == (old.name, old.role, old.algorithm, "active")
    assert keystore.info("generator") == new
    assert keystore.load_signing_key("generator").certificate.serial_number == new.serial
    statuses = {i.serial: i.status for i in keystore.list()}
    assert statuses == {old.serial: "retired", new.serial: "active"}
    policy = keystore.trust_policy()
    assert policy.evaluate(old_cert).status is TrustStatus.TRUSTED  # retired still verifies
    assert policy.evaluate(keystore.certificate("generator")).status is TrustStatus.TRUSTED


def test_rotate_after_revoke_keeps_the_old_generation_revoked(keystore: KeyStore) -> None:
    revoked = keystore.revoke("generator")
    revoked_cert = keystore.certificate("generator")
    new = keystore.rotate("generator")
    assert new.status == "active"
    assert keystore.load_signing_key("generator").certificate.serial_number == new.serial
    statuses = {i.serial: i.status for i in keystore.list()}
    assert statuses == {revoked.serial: "revoked", new.serial: "active"}
    policy = keystore.trust_policy()
    assert policy.evaluate(revoked_cert).status is TrustStatus.REVOKED
    assert policy.evaluate(keystore.certificate("generator")).status is TrustStatus.TRUSTED


# ---- trust store


def _self_signed(cn: str, *, days: int = 30, past: bool = False) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=2 * days) if past else now - dt.timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


def test_trust_external_certificate(keystore: KeyStore, keystore_dir: Path) -> None:
    external = _self_signed("partner hospital signer")
    assert keystore.trust_policy().evaluate(external).status is TrustStatus.UNTRUSTED
    record = keystore.trust(external.public_bytes(serialization.Encoding.PEM))
    assert record.subject == "CN=partner hospital signer" and not record.is_ca
    assert keystore.trust_policy().evaluate(external).status is TrustStatus.TRUSTED
    assert keystore.trust(external.public_bytes(serialization.Encoding.DER)) == record  # idempotent, DER too
    assert [t.fingerprint_sha256 for t in keystore.trusted()] == [record.fingerprint_sha256]
    assert (
        stat.S_IMODE((keystore_dir / "trusted" / f"{record.fingerprint_sha256}.pem").stat().st_mode) == 0o600
    )


def test_unknown_certificate_is_untrusted(keystore: KeyStore) -> None:
    assert keystore.trust_policy().evaluate(_self_signed("stranger")).status is TrustStatus.UNTRUSTED


def test_trust_rejects_garbage_and_expired(keystore: KeyStore) -> None:
    with pytest.raises(KeyStoreError):
        keystore.trust(b"definitely not a certificate")
    with pytest.raises(KeyStoreError, match="expired"):
        keystore.trust(_self_signed("old", days=5, past=True).public_bytes(serialization.Encoding.PEM))
    assert keystore.trusted() == []
