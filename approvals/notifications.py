"""Notifications: an outbox of messages about approvals, delivered to a webhook and by email.

A notification is written in the transaction of what it reports (:func:`enqueue`), one row per
channel, and sent afterwards (:func:`deliver`, run by the SLA sweep), retried with backoff until it is
accepted. To the webhook it is a POST of JSON ``{"id", "kind", "approval_id", "recipients", "data",
"created_at"}`` with the headers ``Steward-Notification-Id`` (the same on every retry: a receiver drops
duplicates by it) and ``Steward-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the
secret>``:

>>> expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()

By email (``STEWARD_NOTIFY_SMTP_HOST``) it is a plain-text message to its recipients with the
request's action, reason, deadline and a link to it in the inbox; its ``Message-ID`` is the
notification's id, the same on every retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
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
            data: dict[str, Any], channels: tuple[str, ...] = ("webhook",)) -> None:
    """An outbox row per channel for a notification about ``approval`` (in the caller's transaction); no
    email when nobody has an address."""
    payload = {**data, "approval_id": approval.id, "run_id": approval.run_id, "workflow": approval.workflow,
               "version": approval.version, "action": approval.action, "reason": approval.reason,
               "roles": approval.roles, "requested_by": approval.requested_by, "inbox_path": f"/inbox/{approval.id}"}
    for channel in channels:
        if channel == "email" and not recipients:
            continue
        session.add(Notification(kind=kind, channel=channel, approval_id=approval.id, recipients=recipients,
                                 created_at=now, next_attempt_at=now, payload=payload))


def enqueue_message(session: Session, *, kind: str, recipients: list[str], data: dict[str, Any], now: datetime,
                    channels: tuple[str, ...]) -> None:
    """An outbox row per channel for a notification about something else than a request (an automatic
    rollback: ``data`` has ``workflow`` and ``reason``)."""
    for channel in channels:
        if channel == "email" and not recipients:
            continue
        session.add(Notification(kind=kind, channel=channel, recipients=recipients, created_at=now,
                                 next_attempt_at=now, payload=data))


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
            if note.channel == "email":
                error = await _mail(config, note, now) if config.notify_smtp_host else "no SMTP server is configured"
            elif config.notify_webhook_url:
                error = await _post(config, client, note, now)
            else:
                error = "no webhook is configured"
            await steward.db.run(lambda s, n=note, e=error: _settle(s, n, e, now))
            sent += error is None
            if error is not None:
                log.warning("notification %s (%s by %s) not delivered: %s", note.id, note.kind, note.channel, error)
    finally:
        if owned:
            await client.aclose()
    return sent


async def _post(config: Any, client: httpx.AsyncClient, note: Notification, now: datetime) -> str | None:
    body = json.dumps({"id": note.id, "kind": note.kind, "approval_id": note.approval_id,
                       "recipients": note.recipients, "data": note.payload,
                       "created_at": note.created_at.isoformat()}, sort_keys=True).encode()
    try:
        answer = await client.post(config.notify_webhook_url, content=body, headers={
            "Content-Type": "application/json", "Steward-Notification-Id": note.id,
            "Steward-Signature": signature(config.notify_webhook_secret, body, int(now.timestamp()))})
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    return None if answer.is_success else f"the webhook answered {answer.status_code}"


SUBJECTS = {
    "approval.reminded": "Reminder: {action} waits for your approval ({workflow})",
    "approval.escalated": "Overdue: {action} in {workflow} was not decided in time",
    "approval.expired": "Expired and rejected: {action} in {workflow}",
    "rollout.rolled_back": "Rolled back: {workflow} {canary} ({guard})",
}


def message(config: Any, note: Notification) -> EmailMessage:
    """The email of a notification: plain text, to its recipients, its id as the Message-ID."""
    data = note.payload
    mail = EmailMessage()
    mail["From"] = config.notify_smtp_from
    mail["To"] = ", ".join(note.recipients)
    mail["Subject"] = SUBJECTS.get(note.kind, "{action} in {workflow}").format(
        action=data.get("action", "?"), workflow=data.get("workflow", "?"), canary=data.get("canary", "?"),
        guard=data.get("guard", "?"))
    mail["Message-ID"] = f"<{note.id}@steward.notifications>"
    mail["Date"] = format_datetime(note.created_at)
    link = config.public_url.rstrip("/") + data.get("inbox_path", "/inbox")
    if note.kind.startswith("rollout."):
        mail.set_content(f"{data.get('reason')}\n\nEvery new run of {data.get('workflow')} now takes "
                         f"{data.get('stable')}; runs already started finish on their version.\n")
        return mail
    lines = [
        f"{data.get('action')} in workflow {data.get('workflow')} {data.get('version')} (run {data.get('run_id')}), "
        f"started by {data.get('requested_by')}.",
        "",
        f"Why it needs a person: {data.get('reason')}",
        f"Who decides: {' or '.join(data.get('roles') or []) or 'any approver'}",
    ]
    lines += [f"{label}: {data[key]}" for key, label in (("due_at", "Due"), ("expires_at", "Rejected if undecided at"))
              if data.get(key)]
    lines += ["", f"Open it in the inbox: {link}"]
    mail.set_content("\n".join(lines) + "\n")
    return mail


async def _mail(config: Any, note: Notification, now: datetime) -> str | None:
    mail = message(config, note)

    def send() -> None:
        timeout = config.http_timeout_seconds
        context = ssl.create_default_context()
        if config.notify_smtp_tls == "ssl":
            server: smtplib.SMTP = smtplib.SMTP_SSL(config.notify_smtp_host, config.notify_smtp_port,
                                                     timeout=timeout, context=context)
        else:
            server = smtplib.SMTP(config.notify_smtp_host, config.notify_smtp_port, timeout=timeout)
        with server:
            if config.notify_smtp_tls == "starttls":
                server.starttls(context=context)
            if config.notify_smtp_username:
                server.login(config.notify_smtp_username, config.notify_smtp_password)
            server.send_message(mail)

    try:
        await asyncio.to_thread(send)
    except (smtplib.SMTPException, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    return None


def _settle(session: Session, note: Notification, error: str | None, now: datetime) -> None:
    if error is None:
        session.execute(update(Notification).where(Notification.id == note.id).values(sent_at=now, last_error=None))
        return
    backoff = min(timedelta(seconds=10 * 2 ** min(note.attempts, 12)), MAX_BACKOFF)
    session.execute(update(Notification).where(Notification.id == note.id, Notification.sent_at.is_(None))
                    .values(next_attempt_at=now + backoff, last_error=error))
