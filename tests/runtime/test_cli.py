"""The ``steward`` CLI as a user runs it: a real process, real exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

STEWARD = [sys.executable, "-m", "runtime.cli"]
PRICE_115 = {"items": [{"sku": "SKU-1001", "new_price": "115.00", "currency": "EUR"}], "reason": "supplier cost up"}

pytestmark = pytest.mark.slow


def steward(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*STEWARD, *args], env=env, capture_output=True, text=True, timeout=120)


def test_price_change_from_the_cli(cli_env) -> None:
    started = steward(cli_env, "run", "price_change", "--input", json.dumps(PRICE_115), "--wait", "--as", "alice")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    assert run["status"] == "waiting_approval" and len(run["pending_approval_ids"]) == 1

    listed = steward(cli_env, "approvals", "list")
    assert run["pending_approval_ids"][0] in listed.stdout and "SKU-1001" in listed.stdout

    decided = steward(cli_env, "approvals", "decide", run["pending_approval_ids"][0], "approve", "--as", "bob",
                      "--comment", "margin ok")
    assert decided.returncode == 0, decided.stderr
    assert json.loads(decided.stdout)["status"] == "succeeded"

    shown = json.loads(steward(cli_env, "runs", "show", run["id"]).stdout)
    assert [s["node"] for s in shown["steps"]] == ["read_prices", "apply_prices", "record"]
    assert run["id"] in steward(cli_env, "runs", "list").stdout
    lines = steward(cli_env, "audit", "list", "--run-id", run["id"]).stdout.splitlines()
    assert json.loads(lines[-1])["kind"] == "run.succeeded"
    verified = steward(cli_env, "audit", "verify")
    assert verified.returncode == 0 and "audit chain intact" in verified.stdout


def test_input_from_a_file_and_a_small_change(cli_env, tmp_path) -> None:
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"items": [{"sku": "SKU-1003", "new_price": "99.00", "currency": "EUR"}],
                                "reason": "promo"}))
    started = steward(cli_env, "run", "price_change", "--input", f"@{path}", "--wait")
    assert json.loads(started.stdout)["status"] == "succeeded", started.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the CLI's checks, not the store's
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nope", "--input", "{}"], "no workflow named 'nope'"),
        (["run", "price_change", "--input", "{oops"], "--input is not valid JSON"),
        (["run", "price_change", "--input", "@/does/not/exist.json"], "no such file"),
        (["run", "price_change", "--input", '{"items": [], "reason": ""}'], "invalid: items, reason"),
        (["approvals", "decide", "abc", "maybe"], "decision must be approve or reject"),
        (["approvals", "decide", "abc", "approve"], "no approval request with id 'abc'"),
        (["runs", "show", "abc"], "no run with id 'abc'"),
    ],
)
def test_bad_input_exits_2_with_one_line(cli_env, args, message) -> None:
    result = steward(cli_env, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_tokens_and_tamper_detection(cli_env) -> None:
    token = steward(cli_env, "tokens", "create", "--user", "ops.bot")
    assert token.returncode == 0 and token.stdout.startswith("stw_")
    steward(cli_env, "run", "price_change", "--input", json.dumps(PRICE_115), "--wait")
    assert steward(cli_env, "audit", "verify").returncode == 0

    from sqlalchemy import create_engine, text

    engine = create_engine(cli_env["STEWARD_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3"))
    engine.dispose()
    broken = steward(cli_env, "audit", "verify")
    assert broken.returncode == 1
    assert "BROKEN at event 3" in broken.stderr


def test_db_upgrade_is_repeatable(cli_env) -> None:
    for _ in range(2):
        result = steward(cli_env, "db", "upgrade")
        assert result.returncode == 0 and "upgraded to head" in result.stdout
