"""One audit row that cannot be written never fails the others in its group commit (issue 11, item 3)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3

import pytest

from totp_service.service.audit import AuditRow, AuditUnavailable, AuditWriter
from totp_service.store import AuditEntry
from totp_service.store.open import open_store
from tests.helpers_app import add_secret, make_settings, pull, running_service, signed_headers


def _row(task_id: str) -> AuditRow:
    return AuditRow(0.0, "alice", task_id, None, None, "127.0.0.1", "pull", "served", None)


def test_a_failing_row_fails_alone() -> None:
    written: list[str | None] = []

    def write(items):  # a store that cannot take one particular row
        if any(entry.task_id == "poison" for entry, _ in items):
            raise sqlite3.IntegrityError("no")
        written.extend(entry.task_id for entry, _ in items)
        return [True] * len(items)

    async def main() -> list[object]:
        writer = AuditWriter(write)
        await writer.start()
        results = await asyncio.gather(*(writer.submit(_row(name)) for name in ("a", "b", "poison", "c")),
                                       return_exceptions=True)
        await writer.stop()
        return results

    results = asyncio.run(main())
    assert results[:2] == [True, True] and results[3] is True
    assert isinstance(results[2], AuditUnavailable)
    assert sorted(written) == ["a", "b", "c"]


@pytest.mark.parametrize("poison", [b'{"task_id":"\\ud800"}', b'{"workflow_run_id":"\\udfff\\ud800x"}'])
def test_a_lone_surrogate_in_a_signed_body_fails_nobody(tmp_path, poison: bytes) -> None:
    settings = make_settings(tmp_path)
    add_secret(settings, "alice@example.com")
    with running_service(settings) as svc:
        def pulls(worker: int) -> list[int]:  # eight clients at once: their rows share commits
            with svc.client() as client:
                statuses = [pull(client, "/totp/alice%40example.com", {"task_id": f"tsk_{worker}_{i}"}).status_code
                            for i in range(12)]
                statuses.append(client.post("/totp/alice%40example.com", content=poison,
                                            headers=signed_headers(poison)).status_code)
                return statuses

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = [status for batch in pool.map(pulls, range(8)) for status in batch]
        assert statuses.count(200) == 96 and statuses.count(400) == 8, sorted(set(statuses))  # never a 503
        rows = svc.store.read_audit(limit=1000)
        assert len([r for r in rows if r.outcome == "served"]) == 96
        assert len([r for r in rows if r.outcome == "refused:bad_request"]) == 8


def test_the_store_writes_fields_it_could_not_encode_as_replacement_characters(tmp_path) -> None:
    settings = make_settings(tmp_path)
    with open_store(settings) as store:
        rows = [(AuditEntry("served", "alice", task_id=f"tsk_{i}"), None) for i in range(3)]
        rows.insert(1, (AuditEntry("refused:x", "bob\ud800", detail="nul\x00 and \udfff"), None))
        assert store.write_audit(rows) == [True] * 4
        stored = {r.identifier: r for r in store.read_audit(limit=10)}
        assert stored["bob\ufffd"].detail == "nul\ufffd and \ufffd" and len(stored) == 2
