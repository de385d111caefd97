"""What the inbox shows: a filtered page of requests with counts, and one request in full (its
arguments against the record as it is now, the policy that asked, the run's timeline, the requester,
the deadline, and whether the person looking may decide it)."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from approvals.models import ApprovalRequest, ApprovalStatus
from approvals.store import count_approvals, get_approval, list_approvals
from approvals.sessions import SignedIn
from approvals.users import READ_ONLY_ROLES
from runtime import audit
from runtime import store as runtime_store
from approvals.schemas import ApprovalPage, ApprovalPublic
from runtime.api.paging import Pages
from runtime.connectors.base import find_action
from runtime.errors import InputInvalid
from runtime.models import utcnow
from runtime.policy import ROLE

PAGE_SIZE = 50
RISKS = ("normal", "high")
STATUSES = ("pending", "approved", "rejected", "cancelled", "all")


# The inbox's cursors (keyset, like the API's, under the inbox's own filters)
CURSORS = Pages("inbox", ApprovalPublic, ApprovalPage, key=lambda a: [a.created_at, a.id], key_types=[datetime, str])


def _bad(name: str, message: str) -> InputInvalid:
    return InputInvalid(f"the filter {name} is invalid: {message}",
                        details=[{"loc": ["query", name], "msg": message, "type": "value_error"}])


@dataclass(frozen=True)
class Filters:
    """The list's filters, as the query string gives them (empty: not filtered)."""

    status: str = "pending"
    workflow: str = ""
    role: str = ""
    risk: str = ""
    older_than_hours: str = ""

    @classmethod
    def parse(cls, query: dict[str, str]) -> Filters:
        found = cls(**{name: query.get(name, default).strip() for name, default in
                       (("status", "pending"), ("workflow", ""), ("role", ""), ("risk", ""),
                        ("older_than_hours", ""))})
        if found.status not in STATUSES:
            raise _bad("status", f"one of {', '.join(STATUSES)}")
        if len(found.workflow) > 100 or not found.workflow.isprintable():
            raise _bad("workflow", "at most 100 printable characters")
        if found.role and not ROLE.match(found.role):
            raise _bad("role", "a role name like pricing_manager")
        if found.risk and found.risk not in RISKS:
            raise _bad("risk", f"one of {', '.join(RISKS)}")
        if found.older_than_hours and (not re.fullmatch(r"[0-9]{1,4}", found.older_than_hours)
                                       or int(found.older_than_hours) > 8760):
            raise _bad("older_than_hours", "a whole number of hours up to 8760")
        return found

    def query(self, now: datetime) -> dict[str, Any]:
        """The keyword filters of :func:`approvals.store.list_approvals`."""
        return {
            "status": None if self.status == "all" else ApprovalStatus(self.status),
            "workflow": self.workflow or None,
            "role": self.role or None,
            "risk": self.risk or None,
            "opened_before": now - timedelta(hours=int(self.older_than_hours)) if self.older_than_hours else None,
        }

    def cursor_filters(self) -> dict[str, Any]:
        return {"status": self.status, "workflow": self.workflow, "role": self.role, "risk": self.risk,
                "older_than_hours": self.older_than_hours}

    def params(self) -> dict[str, str]:
        """The filters as query parameters (those set)."""
        return {k: v for k, v in self.cursor_filters().items() if v and not (k == "status" and v == "pending")}


@dataclass
class ListPage:
    rows: list[ApprovalRequest]
    next_cursor: str | None
    matching: int
    pending: int
    workflows: list[str]


async def list_page(steward: Any, filters: Filters, cursor: str | None, *, limit: int = PAGE_SIZE) -> ListPage:
    after = CURSORS.start(cursor or None, **filters.cursor_filters())
    now = utcnow()

    def read(session: Any) -> ListPage:
        where = filters.query(now)
        rows = list(list_approvals(session=session, limit=limit + 1, after=after, **where))
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = CURSORS.cursor(CURSORS.key(rows[-1]), **filters.cursor_filters()) if more else None
        return ListPage(rows=rows, next_cursor=next_cursor, matching=count_approvals(session=session, **where),
                        pending=count_approvals(session=session, status=ApprovalStatus.pending),
                        workflows=sorted({name for name, _ in steward.registry.keys()}))

    return await steward.db.run(read, read_only=True)


@dataclass
class DiffRow:
    field: str
    before: Any
    after: Any

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass
class Detail:
    approval: ApprovalRequest
    run: Any
    steps: list[Any]
    owner: str
    diff: list[DiffRow]
    diff_note: str
    may_approve: bool
    may_reject: bool
    why_not: str
    overdue: bool
    timeline: list[tuple[datetime, str]] = field(default_factory=list)
    edit: list[EditField] = field(default_factory=list)
    """The edit form's fields when the person may approve and the call can be edited; else none."""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flat(inner, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value} if prefix else {}


async def current_values(steward: Any, approval: ApprovalRequest) -> tuple[list[DiffRow], str]:
    """The request's arguments against the record as it is now, read live through the connector's own
    read (the action's ``current``); a write with no such read shows its arguments as new values."""
    after = _flat(approval.arguments)
    connector, spec = find_action(steward.executor.connectors, approval.action)
    if spec is None or spec.current is None:
        note = "" if connector is not None else "not a connector action: the values it proposes"
        return [DiffRow(k, None, v) for k, v in after.items()], note
    try:
        read, arguments = spec.current(approval.arguments)
        record = await asyncio.wait_for(connector.read(read, **arguments), steward.settings.http_timeout_seconds)
    except Exception as exc:  # noqa: BLE001 - shown to the approver: the page still renders
        return [DiffRow(k, None, v) for k, v in after.items()], (
            f"the current values could not be read ({type(exc).__name__}: {str(exc)[:200]})")
    before = _flat(record) if isinstance(record, dict) else {}
    # An argument the record does not hold names the record (a deal's id): it stays as it is.
    return ([DiffRow(k, before[k] if k in before else v, v) for k, v in after.items()],
            f"current values read live from {connector.name}")


@dataclass(frozen=True)
class EditField:
    """One argument of the call in the edit form: a string as typed, anything else as JSON."""

    name: str
    shown: str
    is_json: bool
    locked: bool
    """It names the record the call acts on: an edit changes values, not the target."""


def edit_fields(approval: ApprovalRequest) -> list[EditField]:
    """The call's arguments as an edit form, those the action does not name ``editable`` locked; none
    when nothing may be edited (a step's own request, an action naming no editable argument, arguments
    shown redacted)."""
    arguments = approval.arguments
    if not approval.editable or audit.digest({"action": approval.action, "arguments": arguments}) != \
            approval.arguments_hash:
        return []
    return [EditField(name, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False),
                      not isinstance(value, str), name not in approval.editable)
            for name, value in arguments.items()]


def edited_arguments(approval: ApprovalRequest, fields: list[EditField], form: dict[str, str]) -> dict[str, Any]:
    """The arguments an edit form posted: a field left out or locked keeps its proposed value."""
    edited = dict(approval.arguments)
    for f in fields:
        raw = form.get(f"arg.{f.name}")
        if f.locked or raw is None:
            continue
        if not f.is_json:
            edited[f.name] = raw
            continue
        try:
            edited[f.name] = json.loads(raw)
        except ValueError:
            raise InputInvalid(f"{f.name} must be JSON, as it was shown (a number, true or false, a list or an "
                               "object)", details=[{"loc": ["body", f"arg.{f.name}"], "msg": "not JSON",
                                                   "type": "json_invalid"}]) from None
    return edited


def may_decide(me: SignedIn, approval: ApprovalRequest) -> tuple[bool, bool, str]:
    """(may approve, may reject, why not): the roles the request names (any deciding role when it names
    none), separation of duties (whoever started the run may reject, never approve), one vote each."""
    if approval.status != ApprovalStatus.pending:
        return False, False, f"this request is {approval.status.value}"
    deciding = set(approval.roles) if approval.roles else None
    if deciding is not None and not me.roles & deciding:
        return False, False, f"this request is for {' or '.join(approval.roles)}; you are not"
    if deciding is None and not me.roles - READ_ONLY_ROLES:
        return False, False, "your roles read requests but do not decide them"
    if me.user == approval.requested_by:
        return False, True, "you started this run, so another person approves it (you may reject it)"
    if any(entry["approver"] == me.user for entry in approval.approvers or []):
        return False, True, "you have approved it already; it needs another person"
    return True, True, ""


async def detail(steward: Any, approval_id: str, me: SignedIn) -> Detail:
    def read(session: Any) -> tuple[ApprovalRequest, Any, list[Any]]:
        approval = get_approval(session=session, approval_id=approval_id)
        run = runtime_store.get_run(session=session, run_id=approval.run_id)
        return approval, run, list(runtime_store.list_steps(session=session, run_id=run.id))

    approval, run, steps = await steward.db.run(read, read_only=True)
    diff, note = await current_values(steward, approval) if approval.status == ApprovalStatus.pending else (
        [DiffRow(k, None, v) for k, v in _flat(approval.arguments).items()], "decided: the values it proposed")
    try:
        wf = steward.registry.get(run.workflow, run.version)
        owner = f"{wf.owner.name} <{wf.owner.email}>"
    except Exception:  # noqa: BLE001 - a version this server does not load: still show the request
        owner = "(this server does not load the workflow's version)"
    may_approve, may_reject, why_not = may_decide(me, approval)
    timeline = [(run.created_at, f"run started by {run.created_by}")]
    timeline += [(s.started_at, f"step {s.node}: {s.status.value}") for s in steps]
    timeline.append((approval.created_at, f"approval requested for {approval.action}"))
    if approval.edited_at is not None:
        timeline.append((approval.edited_at, f"arguments edited by {approval.edited_by}"))
    timeline += [(datetime.fromisoformat(v["at"]), f"approved by {v['approver']}") for v in approval.approvers or []]
    timeline += [(datetime.fromisoformat(c["at"]), f"comment by {c['by']}") for c in approval.comments or []]
    if approval.decided_at is not None:
        timeline.append((approval.decided_at, f"{approval.status.value} by {approval.decided_by}"))
    timeline.sort(key=lambda item: item[0])
    return Detail(approval=approval, run=run, steps=steps, owner=owner, diff=diff, diff_note=note,
                  may_approve=may_approve, may_reject=may_reject, why_not=why_not,
                  overdue=approval.status == ApprovalStatus.pending and approval.due_at < utcnow(),
                  timeline=timeline, edit=edit_fields(approval) if may_approve else [])
