"""Approval deadlines on SQLite and PostgreSQL under a fixed clock: a reminder half way, an escalation to
the workflow's owner and backup when due, expiry (rejected, the safe default) when as long again overdue,
each once however many workers sweep at once, each audited; notifications reach a local webhook with a
valid signature and a local SMTP server as mail, each retried until accepted. Deadlines come from a policy's ``@sla`` or the
workflow's ``approval_sla``; a policy's ``@separate("owner")`` keeps the workflow's owner from approving."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from approvals import sla, users
from approvals.models import ApprovalStatus, Notification
from approvals.service import decide
from approvals.store import get_approval, list_approvals
from runtime import store
from runtime.errors import SeparationOfDuties
from runtime.models import RunStatus
from runtime.service import Steward, open_steward
from tests.fakes import single_node_workflow

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
SECRET = "a webhook secret of some length"


def price(new: str, sku: str = "SKU-1001") -> dict[str, Any]:
    return {"items": [{"sku": sku, "new_price": new, "currency": "EUR"}], "reason": "supplier cost up"}


async def waiting(steward: Steward, new: str = "115.00", *, sku: str = "SKU-1001") -> Any:
    steward.executor.clock = lambda: T0
    run, _ = await steward.executor.submit(workflow="price_change", input=price(new, sku), actor="alice")
    assert (await steward.executor.drive(run.id)).status == RunStatus.waiting_approval
    [approval] = await steward.db.run(lambda s: list_approvals(session=s, run_id=run.id, status=ApprovalStatus.pending))
    return approval


async def events(steward: Steward, kind: str) -> list[Any]:
    return [e for e in await steward.db.run(lambda s: store.list_audit(session=s, limit=10_000)) if e.kind == kind]


async def add_people(steward: Steward) -> None:
    def add(session):
        users.add_user(session=session, name="pat", roles=["pricing_manager"], email="pat@example.com", actor="test")
        users.add_user(session=session, name="sam", roles=["sales_ops"], email="sam@example.com", actor="test")

    await steward.db.run(add)


async def test_a_request_is_reminded_escalated_then_expires_each_once_and_audited(steward: Steward) -> None:
    await add_people(steward)
    approval = await waiting(steward)
    assert (approval.remind_at, approval.due_at, approval.expires_at) == (
        T0 + timedelta(hours=12), T0 + timedelta(hours=24), T0 + timedelta(hours=48))
    quiet = {"reminded": 0, "escalated": 0, "expired": 0, "sent": 0}
    assert await sla.sweep(steward, T0 + timedelta(hours=11, minutes=59)) == quiet
    assert await sla.sweep(steward, T0 + timedelta(hours=12)) == {**quiet, "reminded": 1}
    assert await sla.sweep(steward, T0 + timedelta(hours=13)) == quiet
    [reminded] = await events(steward, "approval.reminded")
    assert reminded.data["recipients"] == ["pat@example.com"] and reminded.actor == "steward:sla"
    assert await sla.sweep(steward, T0 + timedelta(hours=24)) == {**quiet, "escalated": 1}
    [escalated] = await events(steward, "approval.escalated")
    assert escalated.data["recipients"] == ["pricing-ops@example.com"]
    assert await sla.sweep(steward, T0 + timedelta(hours=47)) == quiet
    assert (await steward.db.run(lambda s: get_approval(session=s, approval_id=approval.id))).status == \
        ApprovalStatus.pending
    assert await sla.sweep(steward, T0 + timedelta(hours=48)) == {**quiet, "expired": 1}
    expired = await steward.db.run(lambda s: get_approval(session=s, approval_id=approval.id))
    assert expired.status == ApprovalStatus.rejected and expired.decided_by == "steward:sla"
    [event] = await events(steward, "approval.expired")
    assert event.data["approval_id"] == approval.id and event.run_id == approval.run_id
    assert (await steward.executor.drive(approval.run_id)).status == RunStatus.rejected
    assert await sla.sweep(steward, T0 + timedelta(days=9)) == quiet


async def test_a_decided_request_is_neither_reminded_nor_expired(steward: Steward) -> None:
    approval = await waiting(steward)
    await decide(steward, approval_id=approval.id, decision="approve", actor="pat", comment="ok")
    quiet = {"reminded": 0, "escalated": 0, "expired": 0, "sent": 0}
    assert await sla.sweep(steward, T0 + timedelta(days=3)) == quiet
    assert await events(steward, "approval.expired") == []


async def test_twenty_sweeps_at_once_step_each_request_once(steward: Steward) -> None:
    approval = await waiting(steward)
    for moment in (timedelta(hours=12), timedelta(hours=24), timedelta(hours=48)):
        await asyncio.gather(*(sla.sweep(steward, T0 + moment) for _ in range(20)))
    for kind in ("approval.reminded", "approval.escalated", "approval.expired"):
        assert len(await events(steward, kind)) == 1, kind
    decided = [e for e in await events(steward, "approval.decided") if e.data["approval_id"] == approval.id]
    assert len(decided) == 1


async def test_deadlines_come_from_the_policy_and_the_workflow(steward: Steward, open_custom) -> None:
    four_eyes = await waiting(steward, "128.00", sku="SKU-1002")  # pricing.change_over_25_pct: @sla("8h")
    assert four_eyes.due_at == T0 + timedelta(hours=8) and four_eyes.risk == "high"
    assert four_eyes.separate == ["owner"] and four_eyes.owner["email"] == "pricing-ops@example.com"

    async def ask(state, runtime):
        await runtime.context.request_approval(action="refund", arguments={"amount": "10.00"}, reason="refund")
        return {}

    wf = single_node_workflow("refunds", ask, grants=set())
    object.__setattr__(wf, "approval_sla", timedelta(hours=2))
    async with open_custom([wf]) as custom:
        custom.executor.clock = lambda: T0
        run, _ = await custom.executor.submit(workflow="refunds", input={}, actor="alice")
        await custom.executor.drive(run.id)
        [refund] = await custom.db.run(lambda s: list_approvals(session=s, run_id=run.id))
        assert refund.due_at == T0 + timedelta(hours=2) and refund.expires_at == T0 + timedelta(hours=4)


async def test_the_workflows_owner_may_not_approve_where_policy_separates_them(steward: Steward) -> None:
    def owner(session):
        users.add_user(session=session, name="olga", roles=["pricing_manager"], email="Pricing-Ops@example.com",
                       actor="test")

    await steward.db.run(owner)
    separated = await waiting(steward, "128.00", sku="SKU-1002")
    with pytest.raises(SeparationOfDuties, match="olga owns workflow price_change"):
        await decide(steward, approval_id=separated.id, decision="approve", actor="olga", check_roles=True)
    [violation] = await events(steward, "approval.sod_violation")
    assert violation.actor == "olga"
    ordinary = await waiting(steward, "115.00", sku="SKU-1003")  # no @separate: the owner may approve
    await decide(steward, approval_id=ordinary.id, decision="approve", actor="olga", check_roles=True)


class Receiver:
    """A local webhook receiver on 127.0.0.1: records each POST; answers the statuses queued in ``replies``."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.replies: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.replies.pop(0) if outer.replies else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/steward"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def verified(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    parts = dict(part.split("=", 1) for part in headers["steward-signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected), "the signature verifies with the shared secret"
    return json.loads(body)


async def test_an_escalation_reaches_a_local_webhook_signed_and_retried_until_accepted(settings, connectors) -> None:
    with Receiver() as receiver:
        hooked = settings.model_copy(update={"notify_webhook_url": receiver.url, "notify_webhook_secret": SECRET})
        async with open_steward(hooked, connectors=connectors) as steward:
            await add_people(steward)
            approval = await waiting(steward)
            receiver.replies = [503]  # the receiver is down for the first try
            done = await sla.sweep(steward, T0 + timedelta(hours=12))
            assert done["reminded"] == 1 and done["sent"] == 0
            [(_, first)] = receiver.received
            assert await sla.sweep(steward, T0 + timedelta(hours=12, seconds=5)) == {
                "reminded": 0, "escalated": 0, "expired": 0, "sent": 0}  # backing off
            assert (await sla.sweep(steward, T0 + timedelta(hours=13)))["sent"] == 1
            done = await sla.sweep(steward, T0 + timedelta(hours=24))
            assert done == {"reminded": 0, "escalated": 1, "expired": 0, "sent": 1}
            bodies = [verified(headers, body) for headers, body in receiver.received]
            assert [b["kind"] for b in bodies] == ["approval.reminded", "approval.reminded", "approval.escalated"]
            assert bodies[0]["id"] == bodies[1]["id"] and receiver.received[0][1] == first  # the same message again
            escalated = bodies[2]
            assert escalated["recipients"] == ["pricing-ops@example.com"]
            assert escalated["data"]["approval_id"] == approval.id and escalated["data"]["inbox_path"] == \
                f"/inbox/{approval.id}"
            tampered = receiver.received[2][1].replace(b"pricing-ops", b"attacker-ops")
            with pytest.raises(AssertionError, match="signature verifies"):
                verified(receiver.received[2][0], tampered)
            pending = await steward.db.run(lambda s: s.query(Notification).filter(Notification.sent_at.is_(None)).count())
            assert pending == 0


async def test_the_executor_sweeps_by_itself(settings, connectors) -> None:
    fast = settings.model_copy(update={"sweep_seconds": 0.05})
    async with open_steward(fast, connectors=connectors) as steward:
        approval = await waiting(steward)
        steward.executor.clock = lambda: T0 + timedelta(days=3)
        await steward.executor.start()
        for _ in range(200):
            run = await steward.db.run(lambda s: store.get_run(session=s, run_id=approval.run_id))
            if run.status == RunStatus.rejected:
                break
            await asyncio.sleep(0.05)
        assert run.status == RunStatus.rejected
        assert [e.data["approval_id"] for e in await events(steward, "approval.expired")] == [approval.id]


class Mailbox:
    """A local SMTP server on 127.0.0.1 (aiosmtpd): keeps every message; refuses the first ``refuse``."""

    def __init__(self, refuse: int = 0) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Any] = []
        self.refuse = refuse
        box = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's API
                if box.refuse:
                    box.refuse -= 1
                    return "451 try again later"
                from email import message_from_bytes, policy

                box.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default)))
                return "250 OK"

        with socket.socket() as probe:  # a free port (the controller checks it is up by connecting to it)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> Mailbox:
        self.controller.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.controller.stop()


async def test_notifications_are_also_mailed_and_retried_until_the_server_takes_them(settings, connectors) -> None:
    with Mailbox(refuse=1) as mailbox, Receiver() as receiver:
        both = settings.model_copy(update={
            "notify_webhook_url": receiver.url, "notify_webhook_secret": SECRET, "notify_smtp_host": "127.0.0.1",
            "notify_smtp_port": mailbox.port, "notify_smtp_tls": "none", "notify_smtp_from": "steward@example.com",
            "public_url": "https://steward.example.com"})
        async with open_steward(both, connectors=connectors) as steward:
            await add_people(steward)
            approval = await waiting(steward)
            done = await sla.sweep(steward, T0 + timedelta(hours=12))
            assert done["reminded"] == 1 and done["sent"] == 1  # the webhook took it, the mail server did not
            assert mailbox.messages == [] and len(receiver.received) == 1
            assert (await sla.sweep(steward, T0 + timedelta(hours=13)))["sent"] == 1
            done = await sla.sweep(steward, T0 + timedelta(hours=24))
            assert done["escalated"] == 1 and done["sent"] == 2
            [(to_deciders, reminder), (to_owners, escalation)] = mailbox.messages
            assert to_deciders == ["pat@example.com"] and reminder["From"] == "steward@example.com"
            assert reminder["Subject"] == "Reminder: pricing.set_price waits for your approval (price_change)"
            body = reminder.get_content()
            assert f"https://steward.example.com/inbox/{approval.id}" in body and "pricing_manager" in body
            assert "the price moves by more than 10 %" in body
            assert to_owners == ["pricing-ops@example.com"] and escalation["Subject"].startswith("Overdue:")
            notes = await steward.db.run(lambda s: s.query(Notification).order_by(Notification.created_at).all())
            assert sorted((n.kind, n.channel, n.sent_at is not None) for n in notes) == [
                ("approval.escalated", "email", True), ("approval.escalated", "webhook", True),
                ("approval.reminded", "email", True), ("approval.reminded", "webhook", True)]
            assert reminder["Message-ID"] == f"<{[n.id for n in notes if n.channel == 'email'][0]}@steward.notifications>"


def test_email_settings_need_a_sender(settings) -> None:
    with pytest.raises(ValueError, match="STEWARD_NOTIFY_SMTP_FROM"):
        type(settings)(**{**settings.model_dump(), "notify_smtp_host": "mail.example.com"})
