"""The quarantine: records that failed a workflow's data-quality checks, until a person decides.

A step screens a batch (``runtime.context.screen``, see :mod:`runtime.quality`). Each
failing record becomes a quarantine item with its reasons, written in the same
transaction as the screening's record, so a step that runs again (after a crash, an
approval, a retry) gets the same answer and quarantines nothing twice. There is one item
per workflow, kind and record content: the same bad record read again (by the next run
of a nightly batch) counts up ``seen_count`` on its item instead of piling up.

A person then decides, once (both audited, with a comment):

* **release**: the record is good after all. From then on it passes that workflow's
  screening for its kind; when the kind declares ``resubmit``, a new run of the workflow
  starts with the record as its input, in the same transaction as the release.
* **drop**: the record is not to be processed. Seen again, it stays out of the batch.

>>> items = await steward.quarantine.list(status="quarantined")
>>> await steward.quarantine.release(item_id=items[0].id, actor="ops@example.com", comment="valid after all")
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from runtime import audit
from runtime.db import Database, RawSql
from runtime.errors import Conflict, InputInvalid, NotFound, WorkflowNotFound
from runtime.models import QuarantineItem, new_id, utcnow
from runtime.quality import RecordChecks
from runtime.sdk import Registry

if TYPE_CHECKING:
    from runtime.executor import Executor


class QuarantineStatus(str, enum.Enum):
    quarantined = "quarantined"
    released = "released"
    dropped = "dropped"


# One item per (workflow, kind, record): seen again, it is counted; a person's decision stays.
_UPSERT = (
    "INSERT INTO quarantine_items (id, workflow, version, kind, run_id, last_run_id, node, record, record_digest,"
    " reasons, status, seen_count, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, {json}, ?, {json}, 'quarantined', 1, ?, ?)"
    " ON CONFLICT (workflow, kind, record_digest) DO UPDATE SET seen_count = quarantine_items.seen_count + 1,"
    " last_run_id = excluded.last_run_id, reasons = excluded.reasons, updated_at = excluded.updated_at"
    " RETURNING id, status, seen_count"
)


def quarantine_rows(cursor: Any, raw: RawSql, *, run: Any, node: str, kind: str,
                    failing: Sequence[tuple[int, dict[str, Any], list[dict[str, str]]]]) -> list[dict[str, Any]]:
    """Inside the screening's transaction: file each failing ``(index, record, reasons)``; returns per
    record ``{"index", "id", "status", "seen_count", "record_digest"}`` as the items now stand.

    Items are written in digest order (never in the batch's order), so screenings of the same records
    in any order lock their rows in one order and cannot deadlock. Identical records of one batch are
    one item, filed once; the copies after the first are duplicates and never pass, even when the
    item was released (a release vouches for the record, not for several copies of it)."""
    now = raw.time(utcnow())
    firsts: dict[str, tuple[int, dict[str, Any], list[dict[str, str]]]] = {}
    digests = []
    for index, record, reasons in failing:
        digest = audit.digest(record)
        digests.append(digest)
        firsts.setdefault(digest, (index, record, reasons))
    filed: dict[str, tuple[str, str, int]] = {}
    for digest in sorted(firsts):
        _, record, reasons = firsts[digest]
        cursor.execute(raw.sql(_UPSERT), (new_id(), run.workflow, run.version, kind, run.id, run.id, node[:200],
                                          raw.json(record), digest, raw.json(reasons), now, now))
        filed[digest] = tuple(cursor.fetchone())
    out = []
    for (index, _, _), digest in zip(failing, digests, strict=True):
        item_id, status, seen = filed[digest]
        if firsts[digest][0] != index and status == QuarantineStatus.released.value:
            status = QuarantineStatus.quarantined.value  # a second copy of a released record stays out
        out.append({"index": index, "id": item_id, "status": status, "seen_count": seen, "record_digest": digest})
    return out


class Quarantine:
    """The quarantine's reads and a person's decisions (one transaction each, audited)."""

    def __init__(self, *, db: Database, registry: Registry, executor: Executor) -> None:
        self.db = db
        self.registry = registry
        self.executor = executor

    async def list(self, *, status: QuarantineStatus | None = None, workflow: str | None = None,
                   kind: str | None = None, run_id: str | None = None, limit: int = 100,
                   before: list[Any] | None = None) -> Sequence[QuarantineItem]:
        """Items newest first by ``(created_at, id)``, strictly before the key ``before`` when given."""

        def read(session: Session) -> Sequence[QuarantineItem]:
            query = select(QuarantineItem)
            if status is not None:
                query = query.where(QuarantineItem.status == status.value)
            if workflow is not None:
                query = query.where(QuarantineItem.workflow == workflow)
            if kind is not None:
                query = query.where(QuarantineItem.kind == kind)
            if run_id is not None:
                query = query.where((QuarantineItem.run_id == run_id) | (QuarantineItem.last_run_id == run_id))
            if before is not None:
                created, item_id = before
                query = query.where((QuarantineItem.created_at < created) | (
                    (QuarantineItem.created_at == created) & (QuarantineItem.id < item_id)))
            query = query.order_by(QuarantineItem.created_at.desc(), QuarantineItem.id.desc()).limit(limit)
            return session.scalars(query).all()

        return await self.db.run(read, read_only=True)

    async def get(self, *, item_id: str) -> QuarantineItem:
        return await self.db.run(lambda session: _get(session, item_id), read_only=True)

    async def release(self, *, item_id: str, actor: str, comment: str = "") -> QuarantineItem:
        """Release an item: its record passes the workflow's screening from now on, and when its kind
        declares ``resubmit`` a new run starts with it, in the same transaction (409 once decided)."""
        resubmitted: list[Any] = []

        def decide(session: Session) -> QuarantineItem:
            resubmitted.clear()  # a transaction retried after a blip starts over
            item = _lock_open(session, item_id, "released")
            run = None
            checks = self._checks(item)
            if checks.resubmit is not None:
                wf = self.registry.get(item.workflow)  # a new run takes the highest loaded version
                try:
                    proposed = checks.resubmit(item.record)
                except Exception as exc:  # noqa: BLE001 - the workflow's function: its failure is this record's
                    raise InputInvalid(
                        f"quarantined record {item.id} cannot be resubmitted: the {item.kind!r} checks' resubmit "
                        f"failed on it ({type(exc).__name__}: {exc}); drop it, or fix it at its source",
                        details=[{"loc": ["record"], "msg": f"{type(exc).__name__}: {exc}"[:500],
                                  "type": "resubmit_failed"}]) from None
                data = wf.validate_input(proposed)
                run = self.executor.create_run(session, wf=wf, data=data, actor=actor,
                                               idempotency_key=f"quarantine:{item.id}")
                resubmitted.append(run)
            _decide(session, item, QuarantineStatus.released, actor=actor, comment=comment,
                    run_id=run.id if run is not None else None)
            return item

        item = await self.db.run(decide)
        if resubmitted:
            self.executor.wake()
        return item

    async def drop(self, *, item_id: str, actor: str, comment: str = "") -> QuarantineItem:
        """Drop an item: its record is not processed, and stays out when it is seen again (409 once decided)."""

        def decide(session: Session) -> QuarantineItem:
            item = _lock_open(session, item_id, "dropped")
            _decide(session, item, QuarantineStatus.dropped, actor=actor, comment=comment, run_id=None)
            return item

        return await self.db.run(decide)

    def _checks(self, item: QuarantineItem) -> RecordChecks:
        """The record's checks as the version that quarantined it declares them (else the highest loaded
        version's); a workflow this process does not load cannot release (it may need to resubmit)."""
        try:
            wf = self.registry.get(item.workflow, item.version)
        except WorkflowNotFound:
            try:
                wf = self.registry.get(item.workflow)
            except WorkflowNotFound:
                raise Conflict(f"quarantined record {item.id} belongs to workflow {item.workflow!r}, which this "
                               "server does not load; release it on a server that does (it may start a run), "
                               "or drop it") from None
        checks = wf.checks.get(item.kind)
        if checks is None:
            raise Conflict(f"workflow {item.workflow!r} {wf.version} no longer declares checks for {item.kind!r} "
                           "records; drop the record")
        return checks


def _get(session: Session, item_id: str) -> QuarantineItem:
    item = session.get(QuarantineItem, item_id)
    if item is None:
        raise NotFound(f"no quarantined record {item_id!r}")
    return item


def _lock_open(session: Session, item_id: str, verb: str) -> QuarantineItem:
    item = session.scalars(select(QuarantineItem).where(QuarantineItem.id == item_id).with_for_update()).first()
    if item is None:
        raise NotFound(f"no quarantined record {item_id!r}")
    if item.status != QuarantineStatus.quarantined.value:
        raise Conflict(f"quarantined record {item_id} was already {item.status} by {item.decided_by} at "
                       f"{item.decided_at:%Y-%m-%d %H:%M:%S} UTC; a decided record cannot be {verb}")
    return item


def _decide(session: Session, item: QuarantineItem, status: QuarantineStatus, *, actor: str, comment: str,
            run_id: str | None) -> None:
    now: datetime = utcnow()
    item.status, item.decided_by, item.decided_at = status.value, actor, now
    item.comment, item.resubmitted_run_id, item.updated_at = comment or None, run_id, now
    session.flush()
    data = {"item_id": item.id, "workflow": item.workflow, "kind": item.kind, "record_digest": item.record_digest,
            "run_id": item.run_id, "comment": comment}
    if run_id is not None:
        data["resubmitted_run_id"] = run_id
    audit.append(session, kind=f"quarantine.{status.value}", actor=actor, data=data)
