"""The inbox in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser is
downloaded): a pricing manager signs in, finds the pending price change, sees the diff and the policy's
reason, approves, and the run succeeds; the person who started the run sees no approve button and a
forged POST from their signed-in browser is refused. Screenshots land in test-artifacts/inbox/."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from approvals import users
from runtime import store
from tests.fakes import settle

CHROMIUM = os.environ.get("STEWARD_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "inbox"
PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium): the browser test did NOT run"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def sign_in(page, url: str, name: str, password: str) -> None:
    page.goto(f"{url}/inbox")
    assert "/inbox/login" in page.url
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/inbox")


def test_a_pricing_manager_approves_in_a_real_browser_and_the_requester_cannot(live_server, chromium,
                                                                               request) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    url = live_server.url
    steward = live_server.app.state.steward

    def requester(session):  # a pricing manager who starts a run of their own
        users.add_user(session=session, name="maria", roles=["pricing_manager"], actor="test")
        users.set_password(session=session, name="maria", password="maria's long password", actor="test")
        return store.create_token(session=session, user="maria", scopes=["runs:write", "runs:read"])[1]

    token = {"Authorization": f"Bearer {steward.db.transaction(requester)}"}
    api = httpx.Client(base_url=url, timeout=60)
    request.addfinalizer(api.close)
    run = api.post("/api/v1/runs", json={"workflow": "price_change", "input": PRICE_115}, headers=token).json()
    run = settle(api, run["id"], {"waiting_approval"}, headers=token)
    approval_id = run["pending_approval_id"]

    maria = chromium.new_page()
    sign_in(maria, url, "maria", "maria's long password")
    maria.click(f"a[href='/inbox/{approval_id}']")
    maria.wait_for_url(f"{url}/inbox/{approval_id}")
    assert maria.locator("button[value=approve]").count() == 0
    assert maria.locator("button[value=reject]").count() == 1
    assert "you started this run" in maria.content()
    maria.screenshot(path=str(ARTIFACTS / "1-requester-sees-no-approve.png"), full_page=True)
    csrf = maria.locator("form.decision input[name=csrf_token]").get_attribute("value")
    shown = maria.locator("form.decision input[name=arguments_hash]").get_attribute("value")
    forged = maria.request.post(f"{url}/inbox/{approval_id}/decision", form={
        "csrf_token": csrf, "arguments_hash": shown, "decision": "approve"}, max_redirects=0)
    assert forged.status == 403, forged.text()
    assert steward.db.transaction(lambda s: [e.kind for e in store.list_audit(session=s, run_id=run["id"])]).count(
        "approval.sod_violation") == 1

    manager = chromium.new_context().new_page()
    sign_in(manager, url, "demo.approver", "demo-approver-pass")
    manager.screenshot(path=str(ARTIFACTS / "2-inbox.png"), full_page=True)
    manager.click(f"a[href='/inbox/{approval_id}']")
    manager.wait_for_url(f"{url}/inbox/{approval_id}")
    changed = manager.locator("table.diff tr.changed")
    assert changed.locator("td.before").inner_text() == "100.00"
    assert changed.locator("td.after").inner_text() == "115.00"
    assert "the price moves by more than 10 %: a pricing manager approves" in manager.content()
    manager.screenshot(path=str(ARTIFACTS / "3-detail.png"), full_page=True)
    manager.fill("form.decision textarea[name=comment]", "margin ok")
    manager.click("button[value=approve]")
    manager.wait_for_url(f"{url}/inbox/{approval_id}?done=approve")
    assert "Your approval is recorded." in manager.content()
    manager.screenshot(path=str(ARTIFACTS / "4-approved.png"), full_page=True)
    assert settle(api, run["id"], {"succeeded"}, headers=token)["status"] == "succeeded"
    assert sorted(p.name for p in ARTIFACTS.glob("*.png")) == [
        "1-requester-sees-no-approve.png", "2-inbox.png", "3-detail.png", "4-approved.png"]
