"""The append-only, hash-chained audit trail.

Each event's ``hash`` is SHA-256 over its canonical JSON (sorted keys, no
whitespace) including ``prev_hash``, the hash of the event before it. Appending
first bumps the single ``audit_head`` row, which serialises writers on SQLite and
PostgreSQL alike; :func:`verify` recomputes the chain and names the first event
that does not fit.

>>> await append(session, kind="run.created", actor="alice", run=run, data={"input": {...}})
>>> await session.commit()
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from runtime.models import AuditEvent, AuditHead, utcnow
from runtime.telemetry import current_trace_id

GENESIS = "0" * 64
SECRET_KEYS = frozenset({"authorization", "token", "api_key", "password", "secret", "idempotency_key_secret"})


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(value: Any) -> str:
    """SHA-256 hex of a value's canonical JSON: what the audit stores instead of payloads."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


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


def _hash_fields(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "created_at": event.created_at,
        "actor": event.actor,
        "kind": event.kind,
        "run_id": event.run_id,
        "workflow": event.workflow,
        "version": event.version,
        "trace_id": event.trace_id,
        "data": event.data,
        "prev_hash": event.prev_hash,
    }


def compute_hash(event: AuditEvent) -> str:
    return digest(_hash_fields(event))


async def append(
    session: AsyncSession,
    *,
    kind: str,
    actor: str,
    run: RunLike | None = None,
    data: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> AuditEvent:
    """Add one event to the chain inside the caller's transaction (the caller commits)."""
    # The UPDATE comes first so this transaction holds the write lock before it reads the tip.
    await session.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq + 1))
    seq, prev_hash = (await session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))).one()
    event = AuditEvent(
        seq=seq,
        created_at=utcnow().isoformat(timespec="microseconds"),
        actor=actor,
        kind=kind,
        run_id=run.id if run else None,
        workflow=run.workflow if run else None,
        version=run.version if run else None,
        trace_id=trace_id or current_trace_id() or getattr(run, "trace_id", None),
        data=scrub(data or {}),
        prev_hash=prev_hash,
        hash="",
    )
    event.hash = compute_hash(event)
    session.add(event)
    await session.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=event.hash))
    return event


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify`: ``ok``, how many events were checked, and the first break."""

    ok: bool
    events: int
    broken_seq: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "broken_seq": self.broken_seq, "reason": self.reason}


def verify_events(events: Iterable[AuditEvent], *, head_seq: int, head_hash: str) -> Verification:
    prev_hash, expected_seq, count = GENESIS, 1, 0
    for event in events:
        count += 1
        if event.seq != expected_seq:
            return Verification(False, count, expected_seq, f"event {expected_seq} is missing (next is {event.seq})")
        if event.prev_hash != prev_hash:
            return Verification(False, count, event.seq, f"event {event.seq} does not link to event {event.seq - 1}")
        if compute_hash(event) != event.hash:
            return Verification(False, count, event.seq, f"event {event.seq} was altered: its hash does not match")
        prev_hash, expected_seq = event.hash, event.seq + 1
    if expected_seq - 1 != head_seq or prev_hash != head_hash:
        return Verification(
            False, count, expected_seq, f"the chain ends at event {expected_seq - 1} but its head says {head_seq}"
        )
    return Verification(True, count)


async def verify(session: AsyncSession) -> Verification:
    """Recompute the whole chain in order; name the first event that is missing or altered."""
    head = (await session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1))).one()
    result = await session.stream_scalars(select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=1000))
    events = [event async for event in result]
    return verify_events(events, head_seq=head.seq, head_hash=head.hash)
