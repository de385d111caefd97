"""Run events instead of polling, on SQLite and PostgreSQL: the long-poll answers on the change (not on
its timeout), many waiters at once, changes committed by another process; the SSE stream follows a run
to its end; token lookups are cached yet a revoked token stops within a second; a run's detail is one
query."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import event, update

from runtime import audit, store
from runtime.db import Database
from runtime.models import ApiToken, Run, RunStatus, utcnow
from tests.fakes import settle

OPERATOR = {"Authorization": "Bearer steward-demo-operator"}
APPROVER = {"Authorization": "Bearer steward-demo-approver"}
PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
PRICE_105 = {"items": [{"sku": "SKU-1002", "new_price": "105.00", "currency": "EUR"}], "reason": "small uplift"}


def submit(base: str, payload: dict[str, Any] = PRICE_115) -> dict[str, Any]:
    answer = httpx.post(f"{base}/api/v1/runs", json={"workflow": "price_change", "input": payload}, headers=OPERATOR)
    assert answer.status_code == 201, answer.text
    return answer.json()


def follow(base: str, run_id: str, *, until: set[str], wait: float = 20, seen: str | None = None) -> dict[str, Any]:
    """Long-poll with ``seen`` until the run's status is in ``until`` (a bounded number of requests);
    ``seen``: the status the caller knows (default: whatever the run's status is when asked)."""
    polls: list[tuple[str | None, str, float]] = []
    for _ in range(20):
        params = {"wait": wait, **({"seen": seen} if seen else {})}
        answer = httpx.get(f"{base}/api/v1/runs/{run_id}", params=params, headers=OPERATOR, timeout=wait + 10)
        run = answer.json()
        polls.append((seen, run["status"], round(answer.elapsed.total_seconds(), 3)))
        if run["status"] in until:
            run["polls"] = polls  # (seen, answered, seconds) of each request, for a failing assertion to show
            return run
        seen = run["status"]
    pytest.fail(f"run {run_id} never reached {until}: {polls}")


def slow_fallback(live_server, seconds: float = 60.0) -> None:
    """Watchers would look on their own only after ``seconds``: an answer sooner came from a notification."""
    live_server.app.state.steward.changes.fallback_seconds = seconds


def test_a_long_poll_answers_on_the_change_not_on_its_timeout(live_server) -> None:
    slow_fallback(live_server)
    base = live_server.url
    run = submit(base)
    started = time.monotonic()
    # the caller knows the run as queued (it may have moved on before the first request arrives)
    waited = follow(base, run["id"], until={"waiting_approval", "failed"}, wait=30, seen="queued")
    assert waited["status"] == "waiting_approval" and waited["pending_approval_id"]
    assert time.monotonic() - started < 30, f"answered by the timeout, not by the change: {waited['polls']}"

    # an approval decided by someone else wakes a waiter that holds 'waiting_approval'
    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(follow, base, run["id"], until={"succeeded", "failed"}, wait=30)
        time.sleep(0.2)
        decided = httpx.post(f"{base}/api/v1/approvals/{waited['pending_approval_id']}/decision",
                             json={"decision": "approve", "comment": "margin ok"}, headers=APPROVER)
        assert decided.status_code == 200, decided.text
        assert waiter.result(timeout=40)["status"] == "succeeded"
    assert time.monotonic() - started < 30


def test_seen_closes_the_race_and_an_unchanged_run_answers_at_the_timeout(live_server) -> None:
    base = live_server.url
    run = follow(base, submit(base)["id"], until={"waiting_approval"})
    # the client last saw 'running'; the run moved on before the request arrived: answered at once
    at_once = httpx.get(f"{base}/api/v1/runs/{run['id']}", params={"wait": 30, "seen": "running"}, headers=OPERATOR,
                        timeout=40)
    assert at_once.json()["status"] == "waiting_approval"
    assert at_once.elapsed.total_seconds() < 30
    # nothing changes: after `wait`, the run as it stands
    quiet = httpx.get(f"{base}/api/v1/runs/{run['id']}", params={"wait": 0.5}, headers=OPERATOR, timeout=10)
    assert quiet.status_code == 200 and quiet.json()["status"] == "waiting_approval"
    assert quiet.elapsed.total_seconds() >= 0.5
    # an ended run answers at once whatever `seen` says
    finished = follow(base, submit(base, PRICE_105)["id"], until={"succeeded", "failed"})
    again = httpx.get(f"{base}/api/v1/runs/{finished['id']}", params={"wait": 30}, headers=OPERATOR, timeout=40)
    assert again.json()["status"] == finished["status"] and again.elapsed.total_seconds() < 30


def test_until_answers_in_one_request_once_the_run_reaches_one_of_the_statuses(live_server) -> None:
    slow_fallback(live_server)
    base = live_server.url
    run = submit(base)
    answer = httpx.get(f"{base}/api/v1/runs/{run['id']}", headers=OPERATOR, timeout=40,
                       params=[("wait", 30), ("until", "waiting_approval"), ("until", "succeeded")])
    assert answer.json()["status"] == "waiting_approval" and answer.elapsed.total_seconds() < 30
    # a run that ends in a status not asked for answers at its end all the same
    cancelled = httpx.post(f"{base}/api/v1/runs/{run['id']}/cancel", headers=OPERATOR).json()
    again = httpx.get(f"{base}/api/v1/runs/{run['id']}", headers=OPERATOR, timeout=40,
                      params={"wait": 30, "until": "succeeded"})
    assert cancelled["status"] == again.json()["status"] == "cancelled" and again.elapsed.total_seconds() < 30


@pytest.mark.parametrize("bad", [{"wait": 0}, {"wait": 61}, {"wait": "soon"}, {"wait": 5, "seen": "asleep"},
                                 {"wait": 5, "until": "asleep"}])
def test_bad_wait_parameters_are_field_errors(live_server, bad) -> None:
    answer = httpx.get(f"{live_server.url}/api/v1/runs/nope", params=bad, headers=OPERATOR)
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"][0]["loc"][0] == "query"


def test_24_waiters_released_together_all_hear_their_runs_change(live_server) -> None:
    slow_fallback(live_server)
    base = live_server.url
    runs = [follow(base, submit(base)["id"], until={"waiting_approval"}) for _ in range(3)]
    barrier = threading.Barrier(24)

    def wait_for(index: int) -> str:
        run = runs[index % 3]
        barrier.wait(timeout=30)
        answer = httpx.get(f"{base}/api/v1/runs/{run['id']}", params={"wait": 40, "seen": "waiting_approval"},
                           headers=OPERATOR, timeout=60)
        return answer.json()["status"]

    with ThreadPoolExecutor(24) as pool:
        waiters = [pool.submit(wait_for, i) for i in range(24)]
        time.sleep(0.5)
        started = time.monotonic()
        for run in runs:
            httpx.post(f"{base}/api/v1/approvals/{run['pending_approval_id']}/decision",
                       json={"decision": "reject", "comment": "not now"}, headers=APPROVER).raise_for_status()
        statuses = [w.result(timeout=60) for w in waiters]
    assert set(statuses) <= {"queued", "running", "rejected"} and len(statuses) == 24
    assert time.monotonic() - started < 40, "some waiter was answered by its timeout"
    assert live_server.app.state.steward.changes.watching() == 0, "a watcher was left behind"


def test_a_change_committed_by_another_process_reaches_the_waiter(live_server, settings) -> None:
    """Another process (its own Database, no in-process hub) ends the run: on PostgreSQL its NOTIFY wakes
    the waiter; on SQLite the waiter's own look every second finds it."""
    base = live_server.url
    run = follow(base, submit(base)["id"], until={"waiting_approval"})
    if not settings.is_sqlite:
        slow_fallback(live_server)
    other = Database(settings.database_url)

    def end_elsewhere(session) -> None:
        session.execute(update(Run).where(Run.id == run["id"]).values(status=RunStatus.cancelled, finished_at=utcnow()))
        audit.append(session, kind="run.cancelled", actor="other-process",
                     run=store.get_run(session=session, run_id=run["id"]))

    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(follow, base, run["id"], until={"cancelled"}, wait=30)
        time.sleep(0.3)
        started = time.monotonic()
        other.transaction(end_elsewhere)
        assert waiter.result(timeout=40)["status"] == "cancelled"
    assert time.monotonic() - started < 30
    other.engine.dispose()


def sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events, kind, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and kind:
            events.append((kind, json.loads("\n".join(data))))
            kind, data = None, []
    return events


def test_the_event_stream_follows_a_run_through_its_approval_to_its_end(live_server) -> None:
    slow_fallback(live_server)
    base = live_server.url
    run = submit(base)
    collected: list[tuple[str, dict[str, Any]]] = []

    def decide_when_asked() -> None:
        waiting = follow(base, run["id"], until={"waiting_approval"})
        httpx.post(f"{base}/api/v1/approvals/{waiting['pending_approval_id']}/decision",
                   json={"decision": "approve", "comment": "ok"}, headers=APPROVER).raise_for_status()

    decider = threading.Thread(target=decide_when_asked)
    decider.start()
    with httpx.stream("GET", f"{base}/api/v1/runs/{run['id']}/events", headers=OPERATOR, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        collected = sse(response)  # returns when the server ends the stream
    decider.join(timeout=30)
    statuses = [body["status"] for kind, body in collected if kind == "status"]
    assert statuses[-1] == "succeeded" and "waiting_approval" in statuses
    assert len(statuses) == len(set(statuses)) or statuses.count("queued") <= 2, statuses
    steps = [(body["node"], body["status"]) for kind, body in collected if kind == "step"]
    assert ("apply_prices", "interrupted") in steps and ("apply_prices", "succeeded") in steps
    assert all(set(body) >= {"id", "status", "workflow"} for kind, body in collected if kind == "status")

    # an EventSource reconnecting after the end is told to stop (204), a new follower gets the end at once
    again = httpx.get(f"{base}/api/v1/runs/{run['id']}/events", headers={**OPERATOR, "Last-Event-ID": "9"})
    assert again.status_code == 204
    with httpx.stream("GET", f"{base}/api/v1/runs/{run['id']}/events", headers=OPERATOR, timeout=30) as response:
        replay = sse(response)
    assert [b["status"] for k, b in replay if k == "status"] == ["succeeded"]


def test_the_event_stream_of_an_unknown_run_is_a_404_problem(live_server) -> None:
    answer = httpx.get(f"{live_server.url}/api/v1/runs/nope/events", headers=OPERATOR)
    assert answer.status_code == 404 and answer.headers["content-type"] == "application/problem+json"


def test_a_dropped_follower_leaves_no_watcher_behind(live_server) -> None:
    base = live_server.url
    run = follow(base, submit(base)["id"], until={"waiting_approval"})
    for _ in range(5):
        with httpx.stream("GET", f"{base}/api/v1/runs/{run['id']}/events", headers=OPERATOR, timeout=10) as response:
            next(response.iter_lines())  # read the start, then hang up
    changes = live_server.app.state.steward.changes
    deadline = time.monotonic() + 10
    while changes.watching() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert changes.watching() == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_token_lookups_are_cached_and_a_revoked_token_stops_within_a_second(client, monkeypatch) -> None:
    steward = client.app.state.steward
    _, plain = steward.db.transaction(
        lambda s: store.create_token(session=s, user="cached.user", scopes=["workflows:read"]))
    calls = []
    real = store.authenticate
    monkeypatch.setattr(store, "authenticate", lambda **kw: calls.append(1) or real(**kw))
    headers = {"Authorization": f"Bearer {plain}"}
    started = time.monotonic()
    for _ in range(40):
        assert client.get("/api/v1/workflows", headers=headers).status_code == 200
    elapsed = time.monotonic() - started
    assert len(calls) <= 1 + int(elapsed / client.app.state.tokens.seconds) + 1, (len(calls), elapsed)

    steward.db.transaction(lambda s: s.execute(update(ApiToken).where(ApiToken.user == "cached.user")
                                                .values(revoked_at=utcnow())))
    time.sleep(client.app.state.tokens.seconds + 0.05)
    answer = client.get("/api/v1/workflows", headers=headers)
    assert answer.status_code == 401, "a revoked token still worked after a second"
    assert client.get("/api/v1/workflows", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_runs_detail_is_one_query(client) -> None:
    steward = client.app.state.steward
    created = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115}, headers=OPERATOR)
    run_id = created.json()["id"]
    settle(client, run_id, {"waiting_approval"})
    client.portal.call(steward.executor.stop)  # its background loops would be counted too
    statements: list[str] = []
    # SQLite reads on an engine of their own; PostgreSQL's read engine shares the main one's events
    engines = [steward.db.engine, *([steward.db._read_bind] if steward.db.is_sqlite else [])]

    def count(conn, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        client.get(f"/api/v1/runs/{run_id}", headers=OPERATOR)  # the token is looked up (and cached)
        statements.clear()
        detail = client.get(f"/api/v1/runs/{run_id}", headers=OPERATOR).json()
        assert len(statements) == 1, statements
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
    assert [s["node"] for s in detail["steps"]] == ["read_prices", "apply_prices"]
    assert detail["pending_approval_ids"] == [detail["pending_approval_id"]] and detail["pending_approval_id"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_change_landing_between_the_first_read_and_the_wait_is_not_lost(client, monkeypatch) -> None:
    """The hostile interleaving: the run changes right after the long-poll's first read, before it waits."""
    from runtime.api import runs as runs_api

    steward = client.app.state.steward
    steward.changes.fallback_seconds = 60.0
    created = client.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115}, headers=OPERATOR)
    run_id = created.json()["id"]
    settle(client, run_id, {"waiting_approval"})
    real = runs_api.run_detail
    reads = []

    async def read_then_change(steward_, run_id_):
        detail = await real(steward_, run_id_)
        reads.append(detail.status)
        if len(reads) == 1:  # the change commits (and is announced) after this read, before the wait
            await steward_.executor.cancel(run_id=run_id_, actor="someone-else")
        return detail

    monkeypatch.setattr(runs_api, "run_detail", read_then_change)
    answer = client.get(f"/api/v1/runs/{run_id}", params={"wait": 20}, headers=OPERATOR)
    assert answer.json()["status"] == "cancelled", "the change was lost: answered by the timeout"
    assert answer.elapsed.total_seconds() < 20


def test_a_token_revoked_while_it_follows_a_run_stops_within_a_second_or_two(live_server) -> None:
    base = live_server.url
    steward = live_server.app.state.steward
    _, plain = steward.db.transaction(
        lambda s: store.create_token(session=s, user="short.lived", scopes=["runs:read"]))
    mine = {"Authorization": f"Bearer {plain}"}
    run = follow(base, submit(base)["id"], until={"waiting_approval"})

    def revoke_soon() -> None:
        time.sleep(0.5)
        steward.db.transaction(lambda s: store.revoke_token(session=s, token_id=s.query(ApiToken).filter_by(
            user="short.lived").one().id))

    with ThreadPoolExecutor(1) as pool:
        pool.submit(revoke_soon)
        started = time.monotonic()
        with httpx.stream("GET", f"{base}/api/v1/runs/{run['id']}/events", headers=mine, timeout=30) as response:
            events = sse(response)
        assert events[-1][0] == "error" and events[-1][1]["code"] == "unauthorized", events
        assert time.monotonic() - started < 10, "the stream outlived its token"
    waited = httpx.get(f"{base}/api/v1/runs/{run['id']}", params={"wait": 30}, headers=mine, timeout=40)
    assert waited.status_code == 401


def test_a_long_poll_the_client_dropped_stops_watching(live_server) -> None:
    base = live_server.url
    run = follow(base, submit(base)["id"], until={"waiting_approval"})
    for _ in range(5):
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{base}/api/v1/runs/{run['id']}", params={"wait": 50}, headers=OPERATOR, timeout=0.3)
    changes = live_server.app.state.steward.changes
    deadline = time.monotonic() + 10
    while changes.watching() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert changes.watching() == 0, "an abandoned long-poll kept reading the run"
