"""Cursor pagination, on SQLite and PostgreSQL: every list is read completely, page by page, with no
duplicates and no gaps while rows are inserted concurrently; a bad cursor is a field error."""

from __future__ import annotations

import base64
import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from approvals.models import ApprovalRequest, ApprovalStatus
from runtime import store
from runtime.audit import append
from runtime.models import Run, RunStatus, utcnow

OPERATOR = {"Authorization": "Bearer steward-demo-operator"}


def a_run(created_at: Any, status: RunStatus = RunStatus.succeeded, workflow: str = "price_change") -> Run:
    return Run(workflow=workflow, version="1.0.0", status=status, input={}, created_by="paging-test",
               created_at=created_at, updated_at=created_at)


def insert_runs(steward, runs: list[Run]) -> None:
    steward.db.transaction(lambda s: [store.insert_run(session=s, run=run) for run in runs])


def pages(client, path: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Every page of a listing, following ``next_cursor`` (bounded: a cursor loop fails the test)."""
    cursor = None
    for _ in range(10_000):
        answer = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})}, headers=OPERATOR)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert set(page) == {"data", "next_cursor"}
        yield page
        cursor = page["next_cursor"]
        if cursor is None:
            return
    pytest.fail("the cursor never ran out")


class Inserter(threading.Thread):
    """Inserts rows in small transactions until stopped: now, and (a clock behind, another server) in
    the past, among the rows being paged."""

    def __init__(self, insert: Callable[[int], None]) -> None:
        super().__init__(daemon=True)
        self.insert, self.stop, self.batches, self.error = insert, threading.Event(), 0, None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.insert(self.batches)
                self.batches += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def __enter__(self) -> Inserter:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        self.join(timeout=30)
        assert self.error is None, self.error
        assert self.batches > 0, "nothing was inserted while paging"


def test_2500_runs_are_listed_completely_while_runs_are_inserted(client) -> None:
    steward = client.app.state.steward
    start = utcnow() - timedelta(days=1)
    # 2,500 runs, seven to a timestamp: the id alone orders runs created in the same microsecond
    runs = [a_run(start + timedelta(milliseconds=i // 7)) for i in range(2500)]
    insert_runs(steward, runs)
    rng = random.Random(7)

    def insert(batch: int) -> None:
        then = start + timedelta(milliseconds=rng.randrange(400))
        insert_runs(steward, [a_run(utcnow()), a_run(then), a_run(then)])

    with Inserter(insert) as inserter:
        seen = [run for page in pages(client, "/api/v1/runs", limit=97) for run in page["data"]]
    ids = [run["id"] for run in seen]
    assert len(ids) == len(set(ids)), "a run was listed twice"
    assert {run.id for run in runs} <= set(ids), "a run that existed before paging began was skipped"
    keys = [(run["created_at"], run["id"]) for run in seen]
    assert keys == sorted(keys, reverse=True), "not newest first"
    assert inserter.batches > 0


def test_filtered_runs_page_under_their_filter(client) -> None:
    steward = client.app.state.steward
    start = utcnow() - timedelta(hours=1)
    runs = [a_run(start + timedelta(seconds=i % 50), status=[RunStatus.failed, RunStatus.succeeded][i % 2],
                  workflow=["price_change", "lead_routing"][i % 3 == 0]) for i in range(300)]
    insert_runs(steward, runs)
    wanted = {r.id for r in runs if r.status == RunStatus.failed and r.workflow == "lead_routing"}
    listed = [run for page in pages(client, "/api/v1/runs", status="failed", workflow="lead_routing", limit=9)
              for run in page["data"]]
    assert [r["id"] for r in listed] and {r["id"] for r in listed} == wanted and len(listed) == len(wanted)


def test_250_pending_approvals_are_listed_completely_while_approvals_are_requested(client) -> None:
    steward = client.app.state.steward
    start = utcnow() - timedelta(hours=2)
    parent = a_run(start, status=RunStatus.waiting_approval)
    insert_runs(steward, [parent])

    def approvals(count: int, at: Callable[[int], Any], status: ApprovalStatus = ApprovalStatus.pending) -> list[str]:
        made = [ApprovalRequest(run_id=parent.id, interrupt_id=uuid.uuid4().hex,
                                workflow="price_change", version="1.0.0", node="apply_prices",
                                action="pricing.change_prices", arguments={}, arguments_hash="0" * 64,
                                requested_by="paging-test", status=status, created_at=at(i)) for i in range(count)]
        steward.db.transaction(lambda s: s.add_all(made))
        return [a.id for a in made]

    rng = random.Random(11)
    pending = approvals(250, lambda i: start + timedelta(milliseconds=i // 5))
    decided = approvals(40, lambda i: start + timedelta(milliseconds=i), status=ApprovalStatus.approved)

    with Inserter(lambda _: approvals(2, lambda i: [utcnow(), start + timedelta(milliseconds=rng.randrange(50))][i])):
        seen = [a for page in pages(client, "/api/v1/approvals", status="pending", limit=7) for a in page["data"]]
    ids = [a["id"] for a in seen]
    assert len(ids) == len(set(ids)), "an approval was listed twice"
    assert set(pending) <= set(ids) and not set(decided) & set(ids)
    keys = [(a["created_at"], a["id"]) for a in seen]
    assert keys == sorted(keys), "not oldest first"


def test_audit_pages_in_chain_order_and_after_seq_still_starts_past_a_known_event(client) -> None:
    for i in range(6):
        client.post("/api/v1/runs", json={"workflow": "nope", "input": {}}, headers=OPERATOR)  # not audited
    steward = client.app.state.steward
    for i in range(23):
        steward.db.transaction(lambda s, i=i: append(s, actor="paging-test", kind="test.event", data={"i": i}))
    everything = [e["seq"] for page in pages(client, "/api/v1/audit", limit=5) for e in page["data"]]
    assert everything == sorted(set(everything)) and len(everything) >= 23
    tail = [e["seq"] for page in pages(client, "/api/v1/audit", limit=4, after_seq=everything[10])
            for e in page["data"]]
    assert tail == everything[11:]


def test_a_page_of_exactly_limit_rows_is_the_last_one(client) -> None:
    insert_runs(client.app.state.steward, [a_run(utcnow()) for _ in range(4)])
    answer = client.get("/api/v1/runs", params={"limit": 4}, headers=OPERATOR).json()
    assert len(answer["data"]) == 4 and answer["next_cursor"] is None
    answer = client.get("/api/v1/runs", params={"limit": 3}, headers=OPERATOR).json()
    last = client.get("/api/v1/runs", params={"limit": 3, "cursor": answer["next_cursor"]}, headers=OPERATOR).json()
    assert len(last["data"]) == 1 and last["next_cursor"] is None


def test_a_bad_cursor_is_a_field_error_never_another_listing(client) -> None:
    insert_runs(client.app.state.steward, [a_run(utcnow()) for _ in range(3)])
    runs_cursor = client.get("/api/v1/runs", params={"limit": 1}, headers=OPERATOR).json()["next_cursor"]
    failed_cursor = client.get("/api/v1/runs", params={"limit": 1, "status": "succeeded"},
                               headers=OPERATOR).json()["next_cursor"]
    
    def forged(body: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")

    decoded = json.loads(base64.urlsafe_b64decode(runs_cursor + "=" * (-len(runs_cursor) % 4)))
    cases = [
        ("/api/v1/runs", {"cursor": "garbage!"}, "String should match pattern"),
        ("/api/v1/runs", {"cursor": "garbage"}, "not a cursor Steward made"),
        ("/api/v1/runs", {"cursor": forged([1, 2])}, "not a cursor Steward made"),
        ("/api/v1/runs", {"cursor": forged({**decoded, "k": ["yesterday", "x"]})}, "not a cursor Steward made"),
        ("/api/v1/runs", {"cursor": forged({**decoded, "k": ["2026-01-01T00:00:00", "x"]})},
         "not a cursor Steward made"),  # a naive time: not one Steward wrote
        ("/api/v1/runs", {"cursor": forged({**decoded, "k": [decoded["k"][0]]})}, "not a cursor Steward made"),
        ("/api/v1/runs", {"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("=")}, "not a cursor Steward made"),
        ("/api/v1/approvals", {"cursor": runs_cursor}, "another list"),
        ("/api/v1/audit", {"cursor": runs_cursor}, "another list"),
        ("/api/v1/runs", {"cursor": runs_cursor, "status": "failed"}, "other filters"),
        ("/api/v1/runs", {"cursor": failed_cursor}, "other filters"),
        ("/api/v1/runs", {"cursor": "x" * 1001}, None),
        ("/api/v1/runs", {"cursor": forged({**decoded, "k": ["0001-01-01T00:00:00+05:00", "x"]})},
         "not a cursor Steward made"),  # a time with no UTC form
        ("/api/v1/runs", {"cursor": forged({**decoded, "k": ["9999-12-31T23:59:59-05:00", "x"]})},
         "not a cursor Steward made"),
        ("/api/v1/runs", {"cursor": forged({**decoded, "k": [decoded["k"][0], "a\u0000b"]})},
         "not a cursor Steward made"),
    ]
    for path, params, reason in cases:
        answer = client.get(path, params=params, headers=OPERATOR)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        body = answer.json()
        assert body["errors"][0]["loc"] == ["query", "cursor"], body
        assert reason is None or reason in body["errors"][0]["msg"], body
    audit = client.get("/api/v1/audit", params={"limit": 1}, headers=OPERATOR).json()["next_cursor"]
    audit_body = json.loads(base64.urlsafe_b64decode(audit + "=" * (-len(audit) % 4)))
    too_big = client.get("/api/v1/audit", params={"cursor": forged({**audit_body, "k": [2**31]})}, headers=OPERATOR)
    assert too_big.status_code == 422, too_big.text
    for path, params in [("/api/v1/runs/a%00b", {}), ("/api/v1/runs", {"workflow": "a\x00b"}),
                         ("/api/v1/approvals", {"run_id": "a\x00b"}), ("/api/v1/audit", {"run_id": "a\x00b"}),
                         ("/api/v1/runs/a%00b/events", {})]:
        nul = client.get(path, params=params, headers=OPERATOR)
        assert nul.status_code == 422 and nul.json()["errors"][0]["type"] == "string_nul", (path, nul.text)
    # the same cursor with another page size is fine: limit is not a filter
    assert client.get("/api/v1/runs", params={"cursor": runs_cursor, "limit": 5}, headers=OPERATOR).status_code == 200
