"""Many processes appending at once keep one consistent log (8 processes x 500 appends, both backends).

Half the writers append one record per transaction, the other half in batches of 25 (as scans do).
"""

from __future__ import annotations

import multiprocessing

from audit_testkit import KeySigner, make_entry

from verifier.audit import AuditLog, AuditStatus

WRITERS = 8
APPENDS = 500


def _writer(url: str, key_pem: bytes, cert_pem: bytes, writer: int, batch: int) -> int:
    signer = KeySigner.from_pem(key_pem, cert_pem)
    with AuditLog.open(url, checkpoint_signer=signer, checkpoint_interval=1000, migrate=False) as log:
        done = 0
        while done < APPENDS:
            entries = [
                make_entry(writer * APPENDS + done + k, details={"writer": writer, "n": done + k})
                for k in range(min(batch, APPENDS - done))
            ]
            if batch == 1:
                log.append(entries[0])
            else:
                log.append_many(entries)
            done += len(entries)
    return done


def test_appends_from_8_processes(audit_db_url: str, signer: KeySigner) -> None:
    url = audit_db_url
    AuditLog.open(url).close()  # create the schema once, as a deployment's `medverify db upgrade` would
    key_pem, cert_pem = signer.to_pem()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(WRITERS) as pool:
        counts = pool.starmap(_writer, [(url, key_pem, cert_pem, w, 1 if w % 2 else 25) for w in range(WRITERS)])
    assert counts == [APPENDS] * WRITERS
    with AuditLog.open(url) as log:
        assert log.size() == WRITERS * APPENDS
        result = log.verify(trusted=[signer.certificate])
        assert result.status is AuditStatus.VALID, result.reason
        assert result.records_checked == WRITERS * APPENDS
        assert [c.tree_size for c in log.checkpoints()] == [1000, 2000, 3000, 4000]
        per_writer: dict[int, list[int]] = {}
        for record in log.query():
            per_writer.setdefault(record.entry.details["writer"], []).append(record.entry.details["n"])
        # Every writer's appends are all there, in the order it made them.
        assert per_writer == {w: list(range(APPENDS)) for w in range(WRITERS)}
