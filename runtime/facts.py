"""What a connector action's context builder may use to describe a call to the policies.

A builder turns a call's arguments into the Cedar context its action declares in the
policy schema, adding facts only the engine can vouch for: the current state of the
record (read by the engine itself, just before deciding), counts kept in the database,
whether the engine is undoing the run's own effects. Nothing a step or a model writes is
taken as such a fact.

>>> async def set_price_context(facts: Facts, arguments: dict) -> dict:
...     current = await facts.read("get_price", sku=arguments["sku"], currency=arguments["currency"])
...     return {"amount": cedar_decimal(arguments["amount"]), ...}
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from runtime import store
from runtime.telemetry import tracer

if TYPE_CHECKING:
    from runtime.connectors.base import Connector
    from runtime.journal import Journal, Recorded

HOUR = timedelta(hours=1)


SlotTaker = Callable[[str, str, datetime], Awaitable[int]]


class Facts:
    """One call's facts: who calls, the connector's own reads, the run's recorded calls, counters.

    ``take_slot(key, counter, window_start)`` takes the call's slot in a counter; a hypothetical
    evaluation (``POST /policy/evaluate``) passes one that only looks."""

    def __init__(self, *, run_id: str, workflow: str, version: str, connector: Connector | None, action: str,
                 idempotency_key: str, compensating: bool, clock: Callable[[], datetime],
                 recorded: Mapping[str, Recorded], take_slot: SlotTaker) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.version = version
        self._connector = connector
        self.action = action
        self.idempotency_key = idempotency_key
        self.compensating = compensating
        self._clock = clock
        self._recorded = recorded
        self._take_slot = take_slot
        self.taken: list[str] = []

    @classmethod
    def of_call(cls, *, journal: Journal, connector: Connector | None, action: str, idempotency_key: str,
                compensating: bool, clock: Callable[[], datetime]) -> Facts:
        """The facts of a call a run is making: its recorded calls, counters in the database."""
        db = journal.db

        async def take(key: str, counter: str, window_start: datetime) -> int:
            return await db.run(lambda session: store.take_slot(session=session, key=key, counter=counter,
                                                                window_start=window_start))

        run = journal.run
        return cls(run_id=run.id, workflow=run.workflow, version=run.version, connector=connector, action=action,
                   idempotency_key=idempotency_key, compensating=compensating, clock=clock,
                   recorded=journal.recorded, take_slot=take)

    @classmethod
    def hypothetical(cls, *, db: Any, run_id: str, workflow: str, version: str, connector: Connector | None,
                     action: str, clock: Callable[[], datetime]) -> Facts:
        """The facts of a call nobody makes (``POST /policy/evaluate``, an approver's edit): the
        connector's reads as they are now, no recorded calls, counters only looked at."""
        async def look(key: str, counter: str, window_start: datetime) -> int:
            return await db.run(lambda session: store.peek_slot(session=session, key=key, counter=counter,
                                                                window_start=window_start), read_only=True)

        return cls(run_id=run_id, workflow=workflow, version=version, connector=connector, action=action,
                   idempotency_key=f"hypothetical-{uuid.uuid4().hex}", compensating=False, clock=clock,
                   recorded={}, take_slot=look)

    def now(self) -> datetime:
        return self._clock()

    async def read(self, method: str, **arguments: Any) -> Any:
        """Read through the calling connector's own read action ``method``, outside the gate: not
        recorded and not a step's call, so it sees the record as it is now, each time the call is decided."""
        if self._connector is None:
            raise LookupError(f"{self.action} was called without its connector; its context cannot read")
        with tracer().start_as_current_span(f"steward.policy.read {self._connector.name}.{method}",
                                            attributes={"steward.run_id": self.run_id,
                                                        "steward.workflow": self.workflow,
                                                        "steward.version": self.version,
                                                        "steward.action": self.action}):
            return await self._connector.read(method, **arguments)

    def created_by_run(self, actions: Iterable[str], record_id: str) -> bool:
        """Whether one of this run's recorded calls of ``actions`` created the record ``record_id``."""
        wanted = set(actions)
        return any(call.action in wanted and isinstance(call.response, dict)
                   and str(call.response.get("id")) == str(record_id)
                   for call in self._recorded.values())

    async def count(self, name: str, *, per: timedelta = HOUR) -> int:
        """Take this call's slot in the workflow's counter ``name`` for the current window (an hour by
        default) and return the count with it included. A call decided again (after an approval or a
        crash) keeps the slot it took; a denied call gives it back (the gate does)."""
        now = self.now()
        seconds = per.total_seconds()
        window = datetime.fromtimestamp(now.timestamp() // seconds * seconds, tz=timezone.utc)
        slot = await self._take_slot(self.idempotency_key, f"{self.workflow}:{name}", window)
        self.taken.append(self.idempotency_key)
        trace.get_current_span().set_attribute(f"steward.policy.{name}", slot)
        return slot
