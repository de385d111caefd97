"""Policy files: a malformed one is named with its line (by the loader, ``steward policy check`` and a
refused ``steward serve``); sets are cached by content hash; the table tests run; the explain API answers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import PolicyLoadError
from runtime.policy import Documents, load_policies, statements
from runtime.settings import POLICIES

STEWARD = [sys.executable, "-m", "runtime.cli"]


def folder_with(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder, ignore=shutil.ignore_patterns("tests"))
    (folder / name).write_text(text)
    return folder


GOOD = '@id("extra.ok")\n@reason("fine")\npermit (principal, action == Action::"crm.list_owners", resource);\n'


@pytest.mark.parametrize(("text", "line", "words"), [
    (GOOD + "\n\n@id(\"extra.bad\")\n@reason(\"x\")\npermit (principal action, resource);\n", 6, "cannot parse"),
    (GOOD + '@id("extra.typo")\n@reason("x")\npermit (principal, action == Action::"crm.list_ownerz", resource);\n',
     4, "unrecognized action"),
    (GOOD + '@reason("no id")\npermit (principal, action, resource);\n', 4, "@id"),
    (GOOD + '@id("extra.noreason")\npermit (principal, action, resource);\n', 4, "@reason"),
    (GOOD + '@id("extra.ok")\n@reason("again")\npermit (principal, action, resource);\n', 4, "already used"),
    (GOOD + '@id("extra.esc")\n@escalate("pricing_manager")\n@reason("x")\npermit (principal, action, resource);\n',
     4, "belongs on a forbid"),
    (GOOD + '@id("extra.many")\n@escalate("pricing_manager")\n@approvals("9")\n@reason("x")\n'
            'forbid (principal, action, resource);\n', 4, "1 to 5"),
    (GOOD + '\n// a comment; with a semicolon\n@id("extra.ctx")\n@reason("x")\n'
            'forbid (principal, action == Action::"pricing.set_price", resource) when { context.nope };\n',
     6, "nope"),
    (GOOD + '@id("extra.open")\n@reason("x")\npermit (principal, action, resource)\n', 4, "does not end"),
])
def test_a_malformed_policy_is_named_with_its_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    folder = folder_with(tmp_path, "extra.cedar", text)
    with pytest.raises(PolicyLoadError) as caught:
        load_policies([folder])
    assert caught.value.message.startswith(f"policies/extra.cedar:{line}: "), caught.value.message
    assert words in caught.value.message
    assert caught.value.details[0] == {"file": "policies/extra.cedar", "line": line,
                                       "message": caught.value.details[0]["message"]}


def test_a_malformed_schema_is_named_too(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, "extra.cedarschema", "entity Fine;\n\nentity Broken in [Nowhere]\nentity X;\n")
    with pytest.raises(PolicyLoadError, match=r"policies/extra.cedarschema:3: schema"):
        load_policies([folder])


def test_statements_split_outside_strings_comments_and_braces() -> None:
    text = 'permit (principal, action, resource) when { context.a == "x;y" };\n// not; a statement\n\nforbid(p);'
    assert [line for line, _ in statements(text)] == [1, 4]


def test_a_policy_set_is_parsed_once_per_content_hash(tmp_path: Path) -> None:
    first = load_policies([POLICIES])
    assert load_policies([POLICIES]) is first
    changed = folder_with(tmp_path, "extra.cedar", GOOD)
    other = load_policies([changed])
    assert other is not first and other.hash != first.hash
    assert Documents.read([changed]).hash == other.hash


def test_shipped_policies_check_and_their_table_tests_pass() -> None:
    checked = subprocess.run([*STEWARD, "policy", "check"], capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout.startswith("ok: "), checked.stderr
    tested = subprocess.run([*STEWARD, "policy", "test"], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "of" in tested.stdout and "policy cases passed" in tested.stdout


def test_policy_check_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, "extra.cedar", GOOD + '@id("extra.bad")\n@reason("x")\npermit (principal action, resource);\n')
    answer = subprocess.run([*STEWARD, "policy", "check", "--policies", str(folder)], capture_output=True, text=True)
    assert answer.returncode == 2
    assert answer.stderr.startswith("error: policies/extra.cedar:4: "), answer.stderr
    assert len(answer.stderr.strip().splitlines()) == 1


def test_a_failing_policy_case_fails_policy_test(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "wrong.yaml").write_text(
        "- name: reads are denied (they are not)\n  action: pricing.list_skus\n"
        "  resource: {type: Connector, id: pricing}\n  expect: deny\n")
    answer = subprocess.run([*STEWARD, "policy", "test", "--cases", str(cases)], capture_output=True, text=True)
    assert answer.returncode == 1
    assert "FAIL cases/wrong.yaml: reads are denied (they are not): expected deny, got allow" in answer.stderr
    (cases / "wrong.yaml").write_text("- name: no expectation\n  action: pricing.list_skus\n")
    answer = subprocess.run([*STEWARD, "policy", "test", "--cases", str(cases)], capture_output=True, text=True)
    assert answer.returncode == 2 and "missing resource, expect" in answer.stderr


def test_serve_refuses_to_start_with_a_malformed_policy(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, "extra.cedar", GOOD + "forbid (principal, action, resource);\n")
    env = {**os.environ, "STEWARD_POLICIES": f'["{folder}"]', "STEWARD_DEMO": "true",
           "STEWARD_DATABASE_URL": f"sqlite:///{tmp_path / 'steward.db'}", "STEWARD_PORT": "1"}
    answer = subprocess.run([*STEWARD, "serve"], capture_output=True, text=True, env=env, timeout=60)
    assert answer.returncode == 2
    assert "policies/extra.cedar:4:" in answer.stderr and "@id" in answer.stderr
    assert not (tmp_path / "steward.db").exists(), "nothing was started"


OPERATOR = {"Authorization": "Bearer steward-demo-operator"}


def test_evaluate_explains_a_hypothetical_action_without_calling_it(client, sandbox) -> None:
    asked = client.post("/api/v1/policy/evaluate", headers=OPERATOR, json={
        "workflow": "price_change", "action": "pricing.set_price",
        "arguments": {"sku": "SKU-1001", "currency": "EUR", "amount": "140.00"}})
    assert asked.status_code == 200, asked.text
    body = asked.json()
    assert (body["outcome"], body["roles"], body["approvals"]) == ("escalate", ["pricing_manager"], 2)
    assert body["policies"] == ["pricing.change_over_10_pct", "pricing.change_over_25_pct"]
    assert any("25 %" in reason for reason in body["reasons"])
    assert body["context"]["current_amount"] == "100.0000"
    assert sandbox.state.sandbox.prices[("SKU-1001", "EUR")]["amount"] == "100.00", "nothing was called"

    denied = client.post("/api/v1/policy/evaluate", headers=OPERATOR, json={
        "workflow": "lead_routing", "action": "crm.archive_deal", "resource": {"type": "Deal", "id": "9"},
        "context": {"compensating": False, "created_by_run": False}}).json()
    assert (denied["outcome"], denied["policies"]) == ("deny", ["crm.no_deletes"])

    bad = client.post("/api/v1/policy/evaluate", headers=OPERATOR, json={
        "workflow": "price_change", "action": "pricing.set_price", "resource": {"type": "Sku", "id": "S"},
        "context": {"currency": "EUR"}})
    assert bad.status_code == 422 and "does not fit the schema" in bad.json()["detail"]
    huge = client.post("/api/v1/policy/evaluate", headers=OPERATOR, json={
        "workflow": "price_change", "action": "pricing.set_price", "resource": {"type": "Sku", "id": "S"},
        "context": {"currency": "EUR", "amount": 2**70}})
    assert huge.status_code == 422 and "cannot be encoded" in huge.json()["detail"]
    both = client.post("/api/v1/policy/evaluate", headers=OPERATOR, json={
        "workflow": "price_change", "action": "pricing.set_price", "arguments": {}, "context": {}})
    assert both.status_code == 422
