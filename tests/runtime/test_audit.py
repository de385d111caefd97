"""The audit chain: intact after real runs, and any tampering is caught and named."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from runtime import audit
from runtime.models import AuditEvent
from runtime.service import Steward

PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}


async def make_history(steward: Steward) -> list[AuditEvent]:
    run, _ = await steward.executor.submit(workflow="price_change", input=PRICE_115, actor="alice")
    await steward.executor.drive(run.id)
    return steward.db.transaction(lambda s: list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()))


def tamper(steward: Steward, statement) -> None:
    """What someone with write access to the database could do."""
    steward.db.transaction(lambda s: s.execute(statement))


async def verify(steward: Steward) -> audit.Verification:
    return steward.db.transaction(audit.verify)


async def test_a_real_history_verifies(steward: Steward) -> None:
    events = await make_history(steward)
    assert len(events) >= 8
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:]))
    result = await verify(steward)
    assert result.ok and result.events == len(events)


async def test_changing_any_field_of_any_row_is_named(steward: Steward) -> None:
    events = await make_history(steward)
    fields = {"actor": "mallory", "kind": "run.succeeded", "data": {"forged": True}, "created_at": "2020-01-01T00:00:00",
              "run_id": "someone-else", "trace_id": "0" * 32, "hash": "f" * 64, "prev_hash": "e" * 64}
    for i, (field, value) in enumerate(fields.items()):
        victim = events[(i * 3) % len(events)]
        original = steward.db.transaction(lambda s: s.get(AuditEvent, victim.seq).model_dump())
        tamper(steward, update(AuditEvent).where(AuditEvent.seq == victim.seq).values({field: value}))
        result = await verify(steward)
        assert not result.ok
        assert result.broken_seq == victim.seq, (field, result)
        tamper(steward, update(AuditEvent).where(AuditEvent.seq == victim.seq).values({field: original[field]}))
        assert (await verify(steward)).ok


async def test_a_recomputed_forgery_breaks_the_next_link(steward: Steward) -> None:
    events = await make_history(steward)
    victim = events[2]
    victim.data = {"forged": True}
    victim.hash = audit.compute_hash(victim)
    tamper(steward, update(AuditEvent).where(AuditEvent.seq == victim.seq).values(data=victim.data, hash=victim.hash))
    result = await verify(steward)
    assert (result.ok, result.broken_seq) == (False, victim.seq + 1)
    assert "does not link" in result.reason


async def test_deleted_rows_are_named(steward: Steward) -> None:
    await make_history(steward)
    tamper(steward, delete(AuditEvent).where(AuditEvent.seq == 4))
    result = await verify(steward)
    assert (result.ok, result.broken_seq) == (False, 4)
    tamper(steward, delete(AuditEvent).where(AuditEvent.seq >= 4))
    result = await verify(steward)
    assert not result.ok and "head" in result.reason


def test_secrets_never_reach_the_trail() -> None:
    scrubbed = audit.scrub({"Authorization": "Bearer x", "nested": [{"token": "t", "ok": 1}], "amount": "1.00"})
    assert scrubbed == {"Authorization": "[redacted]", "nested": [{"token": "[redacted]", "ok": 1}], "amount": "1.00"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@hsettings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(st.text(max_size=8), json_values, max_size=5), other=json_values)
def test_the_hash_covers_the_data(data, other) -> None:
    event = AuditEvent(seq=1, created_at="t", actor="a", kind="k", data=data, prev_hash=audit.GENESIS, hash="")
    original = audit.compute_hash(event)
    roundtrip = AuditEvent(**{**event.model_dump(), "data": json.loads(json.dumps(data))})
    assert audit.compute_hash(roundtrip) == original
    changed = {**data, "__extra__": other}
    assert audit.compute_hash(AuditEvent(**{**event.model_dump(), "data": changed})) != original
