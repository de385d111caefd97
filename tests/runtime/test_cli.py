"""The ``steward`` CLI as a user runs it: a real process against a real server, real exit codes, one-line
errors; the actor is always the token's user; local administration never creates a database."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

STEWARD = [sys.executable, "-m", "runtime.cli"]
PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}
APPROVER = "steward-demo-approver"

pytestmark = pytest.mark.slow


def steward(env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*STEWARD, *args], env=env, capture_output=True, text=True, timeout=120, input=stdin)


def as_json(result: subprocess.CompletedProcess) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_price_change_from_the_cli_records_each_tokens_user(serve) -> None:
    env = serve()
    run = as_json(steward(env, "run", "price_change", "--input", json.dumps(PRICE_115), "--wait"))
    assert run["status"] == "waiting_approval" and len(run["pending_approval_ids"]) == 1
    assert run["created_by"] == "demo.operator"

    listed = steward(env, "approvals", "list")
    assert run["pending_approval_ids"][0] in listed.stdout and "SKU-1001" in listed.stdout
    [pending] = as_json(steward(env, "approvals", "list", "--output", "json"))
    assert pending["id"] == run["pending_approval_ids"][0]

    own = steward(env, "approvals", "decide", pending["id"], "approve")  # an operator's token decides nothing
    assert own.returncode == 2 and "does not carry the scope 'approvals:decide'" in own.stderr, own.stderr
    assert len(own.stderr.splitlines()) == 1, own.stderr
    approver = {**env, "STEWARD_TOKEN": APPROVER}
    stale = steward(approver, "approvals", "decide", pending["id"], "approve", "--arguments-hash", "0" * 64)
    assert stale.returncode == 2 and "no longer proposes the arguments" in stale.stderr, stale.stderr
    edited = json.dumps({**pending["arguments"], "amount": "112.00"})  # approved with a smaller rise
    decided = as_json(steward(approver, "approvals", "decide", pending["id"], "approve", "--comment", "margin ok",
                              "--arguments-hash", pending["arguments_hash"], "--arguments", edited))
    assert decided["status"] == "succeeded"
    shown = as_json(steward(env, "approvals", "show", pending["id"], "--output", "json"))
    assert shown["decided_by"] == "demo.approver", "the decision is recorded as the token's user"
    assert shown["arguments"]["amount"] == "112.00" and shown["proposed_arguments"]["amount"] == "115.00"
    assert shown["edited_by"] == "demo.approver"

    shown = as_json(steward(env, "runs", "show", run["id"], "--output", "json"))
    assert [s["node"] for s in shown["steps"]] == ["read_prices", "apply_prices", "record"]
    assert run["id"] in steward(env, "runs", "show", run["id"]).stdout
    assert run["id"] in steward(env, "runs", "list").stdout
    assert [r["id"] for r in as_json(steward(env, "runs", "list", "-o", "json"))] == [run["id"]]
    lines = steward(env, "audit", "list", "--run-id", run["id"]).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert events[-1]["kind"] == "run.succeeded"
    assert {e["actor"] for e in events if e["kind"] == "approval.decided"} == {"demo.approver"}
    assert as_json(steward(env, "audit", "list", "--run-id", run["id"], "-o", "json")) == events
    verified = steward(env, "audit", "verify")
    assert verified.returncode == 0 and "audit chain intact" in verified.stdout

    workflows = as_json(steward(env, "workflows", "list", "--output", "json"))
    assert "price_change" in {w["name"] for w in workflows}
    assert "price_change" in steward(env, "workflows", "list").stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the client side: one database is enough
def test_there_is_no_way_to_choose_another_actor(serve) -> None:
    env = serve()
    for args in (["run", "price_change", "--input", json.dumps(PRICE_115), "--as", "mallory"],
                 ["approvals", "decide", "x", "approve", "--as", "mallory"],
                 ["runs", "cancel", "x", "--as", "mallory"]):
        refused = steward(env, *args)
        assert refused.returncode == 2 and "--as" in refused.stderr, refused.stderr
    impostor = steward({**env, "STEWARD_USER": "mallory"}, "run", "price_change", "--input", json.dumps(PRICE_115))
    assert as_json(impostor)["created_by"] == "demo.operator"
    unknown = steward({**env, "STEWARD_TOKEN": "stw_not-a-token"}, "runs", "list")
    assert unknown.returncode == 2 and "steward login" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the client side: one database is enough
def test_login_stores_the_token_for_its_owner_only_and_logout_forgets_it(serve, tmp_path) -> None:
    env = serve()
    url, token = env.pop("STEWARD_URL"), env.pop("STEWARD_TOKEN")
    assert steward(env, "runs", "list").returncode == 2, "no token anywhere yet"
    wrong = steward(env, "login", "--url", url, "--token", "stw_wrong")
    assert wrong.returncode == 2 and not (tmp_path / "config" / "steward" / "credentials.json").exists()
    done = steward(env, "login", "--url", url, stdin=APPROVER + "\n")  # asked for, not echoed
    assert done.returncode == 0 and "as demo.approver" in done.stdout, done.stderr
    stored = tmp_path / "config" / "steward" / "credentials.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    assert steward(env, "runs", "list").returncode == 0
    elsewhere = steward({**env, "STEWARD_URL": "http://127.0.0.1:9"}, "runs", "list")  # never sent elsewhere
    assert elsewhere.returncode == 2 and "the stored token is for" in elsewhere.stderr, elsewhere.stderr
    os.chmod(stored, 0o644)
    leaky = steward(env, "runs", "list")
    assert leaky.returncode == 2 and "chmod 600" in leaky.stderr
    os.chmod(stored, 0o600)
    assert as_json(steward({**env, "STEWARD_TOKEN": token}, "run", "price_change", "--input",
                           json.dumps(PRICE_115)))["created_by"] == "demo.operator", "the environment wins"
    assert "removed" in steward(env, "logout").stdout and not stored.exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the client side: one database is enough
def test_an_unreachable_server_exits_1_with_one_line(cli_env) -> None:
    from tests.conftest import free_port

    env = {**cli_env, "STEWARD_URL": f"http://127.0.0.1:{free_port()}", "STEWARD_TOKEN": "x"}
    result = steward(env, "runs", "list")
    assert result.returncode == 1 and "cannot reach Steward" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the CLI's checks, not the store's
def test_bad_input_exits_2_with_one_line(serve) -> None:
    env = serve(worker=False)
    cases = [
        (["run", "nope", "--input", "{}"], "no workflow named 'nope'"),
        (["run", "price_change", "--input", "{oops"], "--input is not valid JSON"),
        (["run", "price_change", "--input", "@/does/not/exist.json"], "no such file"),
        (["run", "price_change", "--input", '{"items": [], "reason": ""}'], "input.items"),
        (["approvals", "decide", "abc", "maybe"], "decision must be approve or reject"),
        (["approvals", "decide", "abc", "approve", "--arguments", "{oops"], "--arguments is not JSON"),
        (["approvals", "decide", "abc", "approve", "--arguments", "[1]"], "--arguments must be a JSON object"),
        (["approvals", "decide", "abc", "reject", "--arguments", "{}"], "--arguments goes with approve"),
        (["approvals", "decide", "abc", "approve", "--arguments", "{}"], "--arguments goes with approve"),
        (["approvals", "decide", "abc", "approve"], "does not carry the scope 'approvals:decide'"),
        (["runs", "show", "abc"], "no run with id 'abc'"),
        (["runs", "list", "--status", "asleep"], "asleep"),
        (["tokens", "revoke", "nope"], "no token with id 'nope'"),
        (["tokens", "create", "--user", "x", "--scope", "everything"], "unknown scope(s) everything"),
    ]
    approver = {**env, "STEWARD_TOKEN": APPROVER}
    for token_env, args, message in [*((env, *case) for case in cases),
                                     (approver, ["approvals", "decide", "abc", "approve"],
                                      "no approval request with id 'abc'")]:
        result = steward(token_env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_tokens_are_created_listed_and_revoked_locally_and_the_server_stops_accepting_them(serve) -> None:
    env = serve()
    unscoped = steward(env, "tokens", "create", "--user", "ops.bot")
    assert unscoped.returncode == 2 and "name the scopes" in unscoped.stderr, unscoped.stderr
    unknown = steward(env, "tokens", "create", "--user", "ops.bot", "--scope", "runs:delete")
    assert unknown.returncode == 2 and "unknown scope(s) runs:delete" in unknown.stderr, unknown.stderr
    token = steward(env, "tokens", "create", "--user", "ops.bot", "--scope", "runs:read", "--scope", "runs:write")
    assert token.returncode == 0 and token.stdout.startswith("stw_")
    plain = token.stdout.strip()
    bot = {**env, "STEWARD_TOKEN": plain}
    assert as_json(steward(bot, "run", "price_change", "--input", json.dumps(PRICE_115)))["created_by"] == "ops.bot"
    [listed] = as_json(steward(env, "tokens", "list", "--user", "ops.bot", "--output", "json"))
    assert listed["user"] == "ops.bot" and listed["revoked_at"] is None and "token_hash" not in listed
    assert listed["scopes"] == ["runs:read", "runs:write"] and listed["demo"] is False
    refused = steward(bot, "approvals", "list")  # a scope the token lacks
    assert refused.returncode == 2 and "does not carry the scope 'approvals:read'" in refused.stderr, refused.stderr
    assert plain not in steward(env, "tokens", "list").stdout
    revoked = steward(env, "tokens", "revoke", listed["id"])
    assert revoked.returncode == 0 and "ops.bot" in revoked.stdout
    import time

    time.sleep(1.1)  # the server remembers a token for at most a second
    refused = steward(bot, "runs", "list")
    assert refused.returncode == 2 and "unknown or revoked" in refused.stderr
    kinds = [json.loads(line)["kind"] for line in steward(env, "audit", "list").stdout.splitlines()]
    assert "token.created" in kinds and "token.revoked" in kinds


def test_tamper_detection(serve, cli_env) -> None:
    env = serve()
    steward(env, "run", "price_change", "--input", json.dumps(PRICE_115), "--wait")
    assert steward(env, "audit", "verify").returncode == 0

    from sqlalchemy import create_engine, text

    engine = create_engine(cli_env["STEWARD_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3"))
    engine.dispose()
    broken = steward(env, "audit", "verify")
    assert broken.returncode == 1
    assert "BROKEN at event 3" in broken.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_local_commands_never_create_a_database(cli_env, tmp_path) -> None:
    missing = tmp_path / "elsewhere" / "nothing.db"
    env = {**cli_env, "STEWARD_DATABASE_URL": f"sqlite:///{missing}"}
    for args in (["tokens", "create", "--user", "x", "--scope", "all"], ["tokens", "list"], ["audit", "verify"],
                 ["db", "upgrade"]):
        result = steward(env, *args)
        assert result.returncode == 2 and "no Steward database at" in result.stderr, (args, result.stderr)
        assert not missing.exists() and not missing.parent.exists()
    created = steward(env, "db", "upgrade", "--create")
    assert created.returncode == 0 and missing.exists()
    assert steward(env, "tokens", "list").returncode == 0


def test_db_upgrade_is_repeatable(cli_env) -> None:
    for _ in range(2):
        result = steward(cli_env, "db", "upgrade", "--create")
        assert result.returncode == 0 and "upgraded to head" in result.stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the client side: one database is enough
def test_version_and_a_help_that_loads_nothing_heavy(cli_env) -> None:
    version = steward(cli_env, "--version")
    assert version.returncode == 0 and version.stdout.startswith("steward 0.")
    probe = ("import sys, runpy; sys.argv = ['steward', '--help']\n"
             "try:\n    runpy.run_module('runtime.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "heavy = sorted(m for m in ('sqlalchemy', 'langgraph', 'fastapi', 'httpx', 'pydantic', 'opentelemetry',"
             " 'sqlmodel', 'psycopg') if m in sys.modules)\n"
             "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", probe], env=cli_env, capture_output=True, text=True, timeout=60)
    assert "Usage: steward" in result.stdout and "HEAVY []" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the client side: one database is enough
def test_quarantined_leads_are_listed_released_and_dropped_from_the_cli(serve) -> None:
    env = serve()
    lead = {"email": "jo@mailinator.com", "first_name": "Jo", "last_name": "Ray", "company": "Ray Ltd",
            "country": "GB", "source": "web", "employees": 20}
    run = as_json(steward(env, "run", "lead_routing", "--input", json.dumps(lead), "--wait"))
    assert run["status"] == "succeeded" and run["output"]["quarantined"]
    [item] = as_json(steward(env, "quarantine", "list", "-o", "json"))
    assert item["id"] == run["output"]["quarantined"] and item["status"] == "quarantined"
    listed = steward(env, "quarantine", "list", "--status", "quarantined").stdout
    assert item["id"] in listed and "mailinator.com is a disposable mail domain" in listed
    assert as_json(steward(env, "quarantine", "show", item["id"]))["record"]["email"] == "jo@mailinator.com"

    released = steward(env, "quarantine", "release", item["id"], "--comment", "a real customer")
    assert released.returncode == 0 and f"released {item['id']}; run " in released.stdout
    again = steward(env, "quarantine", "drop", item["id"])
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "already released by demo.operator" in again.stderr
    bad = steward(env, "quarantine", "list", "--status", "lost")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
