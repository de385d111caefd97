"""The append-only, hash-chained audit trail.

Each event's ``hash`` is SHA-256 over its canonical JSON (compact, sorted keys,
UTF-8, as orjson writes it) including ``prev_hash``, the hash of the event before it. Appending
first bumps the single ``audit_head`` row, which serialises writers on SQLite and
PostgreSQL alike; :func:`verify` recomputes the chain and names the first event
that does not fit.

>>> await db.run(lambda session: append(session, kind="token.created", actor="ops", data={"user": "bot"}))
>>> (await db.run(verify, read_only=True)).ok
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy.orm import Session

from runtime import changes
from runtime.db import RawSql, raw_cursor, raw_sql, touch_runs
from runtime.models import AuditEvent, utcnow
from runtime.telemetry import current_trace_id

GENESIS = "0" * 64
SECRET_KEYS = frozenset({"authorization", "token", "api_key", "password", "secret", "idempotency_key_secret"})


_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys, UTF-8, values it cannot encode as their ``str``: what hashes are taken of."""
    return orjson.dumps(value, option=_CANONICAL, default=str).decode()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def digest(value: Any) -> str:
    """SHA-256 hex of a value's canonical JSON: what the audit stores instead of payloads."""
    return hashlib.sha256(orjson.dumps(value, option=_CANONICAL, default=str)).hexdigest()


def scrub(value: Any) -> Any:
    """A JSON-safe copy with secret-looking keys replaced by ``"[redacted]"``."""
    if isinstance(value, dict):
        return {k: "[redacted]" if str(k).lower() in SECRET_KEYS else scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return str(value)


class RunLike(Protocol):
    id: str
    workflow: str
    version: str
    trace_id: str | None


HASHED = ("seq", "created_at", "actor", "kind", "run_id", "workflow", "version", "trace_id", "data", "prev_hash")


def _hash_fields(row: Any) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    return {name: get(name) for name in HASHED}


def compute_hash(event: AuditEvent | dict[str, Any]) -> str:
    return digest(_hash_fields(event))


_BUMP = "UPDATE audit_head SET seq = seq + ? WHERE id = 1 RETURNING seq, hash"
_INSERT = ("INSERT INTO audit_events (seq, created_at, actor, kind, run_id, workflow, version, trace_id, data,"
           " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {json}, ?, ?)")
_SET_HEAD = "UPDATE audit_head SET hash = ? WHERE id = 1"
# PostgreSQL: the same, and tell listeners which runs changed (see runtime.changes), in one round trip.
_SET_HEAD_NOTIFY = "UPDATE audit_head SET hash = ? WHERE id = 1 RETURNING pg_notify(?, ?)"


def pending_event(
    *,
    kind: str,
    actor: str,
    run: RunLike | None = None,
    data: dict[str, Any] | None = None,
    trace_id: str | None = None,
    created_at: datetime | None = None,
    trusted: bool = False,
) -> dict[str, Any]:
    """An event's content, taken now (time, trace) and chained later by :func:`write_events`.

    ``trusted`` data was composed by Steward from digests and names only and skips the secret scrub."""
    return {
        "created_at": (created_at or utcnow()).isoformat(timespec="microseconds"),
        "actor": actor,
        "kind": kind,
        "run_id": run.id if run else None,
        "workflow": run.workflow if run else None,
        "version": run.version if run else None,
        "trace_id": trace_id or (run.trace_id if run else None) or current_trace_id(),
        "data": (data or {}) if trusted else scrub(data or {}),
    }


def write_events(cursor: Any, raw: RawSql, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chain and insert ``events`` in the cursor's transaction (the caller commits)."""
    if not events:
        return []
    # Bumping the head first takes the write lock before the tip is read, on SQLite and PostgreSQL.
    cursor.execute(raw.sql(_BUMP), (len(events),))
    last_seq, prev_hash = cursor.fetchone()
    rows = []
    for offset, event in enumerate(events):
        row = {**event, "seq": last_seq - len(events) + 1 + offset, "prev_hash": prev_hash}
        row["hash"] = prev_hash = compute_hash(row)
        rows.append(row)
    cursor.executemany(raw.sql(_INSERT), [
        (r["seq"], r["created_at"], r["actor"], r["kind"], r["run_id"], r["workflow"], r["version"], r["trace_id"],
         raw.json(r["data"]), r["prev_hash"], r["hash"]) for r in rows
    ])
    runs = sorted({r["run_id"] for r in rows if r["run_id"]})
    if runs and raw.postgres:  # sent when the transaction commits, to every process listening
        cursor.execute(raw.sql(_SET_HEAD_NOTIFY), (prev_hash, changes.CHANNEL, changes.payload(runs)))
    else:
        cursor.execute(raw.sql(_SET_HEAD), (prev_hash,))
    touch_runs(runs)
    return rows


def append(session: Session, *, kind: str, actor: str, run: RunLike | None = None,
           data: dict[str, Any] | None = None, trace_id: str | None = None) -> dict[str, Any]:
    """Add one event to the chain inside the session's transaction (the caller commits).

    >>> await db.run(lambda session: append(session, kind="token.created", actor="ops", data={"user": "bot"}))
    """
    session.flush()
    raw = raw_sql(postgres=session.get_bind().dialect.name == "postgresql")
    event = pending_event(kind=kind, actor=actor, run=run, data=data, trace_id=trace_id)
    return write_events(raw_cursor(session), raw, [event])[0]


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify`: ``ok``, how many events were checked, and the first break."""

    ok: bool
    events: int
    broken_seq: int | None = None
    reason: str | None = None
    disagreements: tuple[str, ...] = ()
    """Rows that differ from the events they project (an approval's decision, say): see :func:`verify`."""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "broken_seq": self.broken_seq, "reason": self.reason,
                "disagreements": list(self.disagreements)}


def verify_events(events: Iterable[dict[str, Any]], *, head_seq: int, head_hash: str) -> Verification:
    """Check ``events`` (mappings of the stored columns, in seq order) against each other and the head."""
    prev_hash, expected_seq, count = GENESIS, 1, 0
    for event in events:
        count += 1
        seq = event["seq"]
        if seq != expected_seq:
            return Verification(False, count, expected_seq, f"event {expected_seq} is missing (next is {seq})")
        if event["prev_hash"] != prev_hash:
            return Verification(False, count, seq, f"event {seq} does not link to event {seq - 1}")
        if compute_hash(event) != event["hash"]:
            return Verification(False, count, seq, f"event {seq} was altered: its hash does not match")
        prev_hash, expected_seq = event["hash"], seq + 1
    if expected_seq - 1 != head_seq or prev_hash != head_hash:
        return Verification(
            False, count, expected_seq, f"the chain ends at event {expected_seq - 1} but its head says {head_seq}"
        )
    return Verification(True, count)


VERIFY_BATCH = 5000
# Every so many events a verification pauses for a moment: it runs in a thread beside the event
# loop, and a thread that never blocks would make the loop wait up to the interpreter's switch
# interval (5 ms) each time it takes the GIL back after a socket call.
YIELD_EVERY = 200
YIELD_SECONDS = 0.0002
_STORED = (*HASHED, "hash")
_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
_BATCH = (f"SELECT {', '.join(name if name != 'data' else 'CAST(data AS TEXT)' for name in _STORED)}"
          " FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?")


def _events_in_batches(cursor: Any, raw: RawSql, batch: int) -> Iterator[dict[str, Any]]:
    """Every event in chain order, ``batch`` rows per query keyed by seq (no cursor held open between them)."""
    after, data = 0, _STORED.index("data")
    while True:
        cursor.execute(raw.sql(_BATCH), (after, batch))
        rows = cursor.fetchall()
        for number, row in enumerate(rows, 1):
            event = dict(zip(_STORED, row))
            event["data"] = orjson.loads(row[data])
            yield event
            if number % YIELD_EVERY == 0:
                time.sleep(YIELD_SECONDS)
        if len(rows) < batch:
            return
        after = rows[-1][0]


def verify(session: Session, *, batch: int = VERIFY_BATCH,
           projections: Callable[[Session], list[str]] | None = None) -> Verification:
    """Recompute the whole chain in order; name the first event that is missing or altered. With
    ``projections`` (the approval port's ``disagreements``), also name each row that differs from the
    events it projects; any makes the verification fail.

    A long chain is read ``batch`` events at a time; run it as a read-only transaction, so that it
    reads one snapshot beside the writers instead of holding them up:

    >>> await db.run(verify, read_only=True)
    """
    raw = raw_sql(postgres=session.get_bind().dialect.name == "postgresql")
    cursor = raw_cursor(session)
    cursor.execute(raw.sql(_HEAD))
    head_seq, head_hash = cursor.fetchone()
    result = verify_events(_events_in_batches(cursor, raw, batch), head_seq=head_seq, head_hash=head_hash)
    found = tuple(projections(session)) if projections is not None else ()
    if not found:
        return result
    return dataclasses.replace(result, ok=False, disagreements=found,
                               reason=result.reason or f"{len(found)} row(s) differ from their audit events")
