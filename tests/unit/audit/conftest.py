"""Fixtures for the audit tests: a checkpoint key made with ``cryptography`` directly, and an open log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from audit_testkit import KeySigner, make_signer

from verifier.audit import AuditLog


@pytest.fixture(scope="session")
def signer() -> KeySigner:
    return make_signer()


@pytest.fixture(scope="session")
def other_signer() -> KeySigner:
    return make_signer("someone else")


@pytest.fixture
def audit_log(audit_db_url: str, signer: KeySigner) -> Iterator[AuditLog]:
    """An empty log on each backend, checkpointing every 5 records."""
    log = AuditLog.open(audit_db_url, checkpoint_signer=signer, checkpoint_interval=5)
    yield log
    log.close()
