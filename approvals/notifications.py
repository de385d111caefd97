"""Notifications: an outbox of messages about approvals, and their delivery to a webhook.

A notification is written in the transaction of what it reports (:func:`enqueue`) and sent afterwards
(:func:`deliver`, run by the SLA sweep), retried with backoff until the webhook accepts it. It is a
POST of JSON ``{"id", "kind", "approval_id", "recipients", "data", "created_at"}`` with the headers
``Steward-Notification-Id`` (the same on every retry: a receiver drops duplicates by it) and
``Steward-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>``:

>>> expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from approvals.models import ApprovalRequest, Notification, User

log = logging.getLogger("steward.approvals.notifications")

BATCH = 100
MAX_BACKOFF = timedelta(hours=1)


def deciders(session: Session, approval: ApprovalRequest) -> list[str]:
    """The emails of the active people who may decide ``approval`` (those holding one of its roles)."""
    wanted = set(approval.roles or [])
    people = session.scalars(select(User).where(User.disabled_at.is_(None))).all()
    return sorted({u.email for u in people if u.email and (not wanted or wanted & set(u.roles or []))})


def owners(approval: ApprovalRequest) -> list[str]:
    """The workflow's owner and their backup (where an overdue request goes)."""
    owner = approval.owner or {}
    return [email for email in (owner.get("email"), owner.get("backup")) if email]


def enqueue(session: Session, *, kind: str, approval: ApprovalRequest, recipients: list[str], now: datetime,
            data: dict[str, Any]) -> None:
    """An outbox row for a notification about ``approval`` (in the caller's transaction)."""
    session.add(Notification(kind=kind, approval_id=approval.id, recipients=recipients, created_at=now,
                             next_attempt_at=now, payload={
                                 **data, "approval_id": approval.id, "run_id": approval.run_id,
                                 "workflow": approval.workflow, "version": approval.version,
                                 "action": approval.action, "reason": approval.reason, "roles": approval.roles,
                                 "requested_by": approval.requested_by, "inbox_path": f"/inbox/{approval.id}"}))


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Steward-Signature`` header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


async def deliver(steward: Any, now: datetime, *, client: httpx.AsyncClient | None = None) -> int:
    """Send the notifications due at ``now``; each is claimed first (another worker leaves it alone for a
    minute), marked sent when the webhook answers 2xx, else tried again later with backoff."""
    config = steward.settings

    def claim(session: Session) -> list[Notification]:
        due = session.scalars(select(Notification).where(
            Notification.sent_at.is_(None), Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at).limit(BATCH)).all()
        claimed = []
        for note in due:
            result = session.execute(update(Notification).where(
                Notification.id == note.id, Notification.sent_at.is_(None), Notification.next_attempt_at <= now)
                .values(next_attempt_at=now + timedelta(minutes=1), attempts=Notification.attempts + 1))
            if result.rowcount == 1:
                session.refresh(note)
                session.expunge(note)
                claimed.append(note)
        return claimed

    notes = await steward.db.run(claim)
    if not notes:
        return 0
    sent = 0
    owned = client is None
    client = client or httpx.AsyncClient(timeout=config.http_timeout_seconds)
    try:
        for note in notes:
            body = json.dumps({"id": note.id, "kind": note.kind, "approval_id": note.approval_id,
                               "recipients": note.recipients, "data": note.payload,
                               "created_at": note.created_at.isoformat()}, sort_keys=True).encode()
            error = None
            try:
                answer = await client.post(config.notify_webhook_url, content=body, headers={
                    "Content-Type": "application/json", "Steward-Notification-Id": note.id,
                    "Steward-Signature": signature(config.notify_webhook_secret, body, int(now.timestamp()))})
                if not answer.is_success:
                    error = f"the webhook answered {answer.status_code}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            await steward.db.run(lambda s, n=note, e=error: _settle(s, n, e, now))
            sent += error is None
            if error is not None:
                log.warning("notification %s (%s) not delivered: %s", note.id, note.kind, error)
    finally:
        if owned:
            await client.aclose()
    return sent


def _settle(session: Session, note: Notification, error: str | None, now: datetime) -> None:
    if error is None:
        session.execute(update(Notification).where(Notification.id == note.id).values(sent_at=now, last_error=None))
        return
    backoff = min(timedelta(seconds=10 * 2 ** min(note.attempts, 12)), MAX_BACKOFF)
    session.execute(update(Notification).where(Notification.id == note.id, Notification.sent_at.is_(None))
                    .values(next_attempt_at=now + backoff, last_error=error))
