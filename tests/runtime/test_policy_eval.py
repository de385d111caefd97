"""The evaluator on its own: a decision never depends on how a context value is written (explicit decimal
``{"__extn": ...}`` or its text, which the schema reads as one) or on what was decided before it; misfits and malformed escapes
are refused however often well-formed requests of the same action came first; ``action in`` a group sees
the schema's action hierarchy, and a schema that cannot name Steward's principal is refused at load."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from runtime.errors import PolicyContextInvalid
from runtime.policy import Documents, Policies, PolicyRequest, cedar_decimal
from runtime.settings import POLICIES

DECIMALS = ("amount", "current_amount", "change_pct", "abs_change_pct")


def fresh() -> Policies:
    """A set of its own (not the process-wide cached one), so nothing was decided before the test."""
    return Policies(Documents.read([POLICIES]))


def expected(change: Decimal, compensating: bool) -> tuple[str, int]:
    """The shipped price rules, written out: what Cedar must answer."""
    if compensating:
        return "allow", 0
    if change < Decimal("-30"):
        return "deny", 0
    if abs(change) > 25:
        return "escalate", 2
    if abs(change) > 10:
        return "escalate", 1
    return "allow", 0


def set_price(change: Decimal, *, bare: frozenset[str] = frozenset(), compensating: bool = False,
              **overrides: object) -> PolicyRequest:
    values = {"amount": 100 + change, "current_amount": Decimal(100), "change_pct": change,
              "abs_change_pct": abs(change)}
    context: dict[str, object] = {"currency": "EUR", "compensating": compensating}
    for name, value in values.items():
        context[name] = cedar_decimal(value) if name in bare else {"__extn": {"fn": "decimal", "arg": f"{value:.4f}"}}
    context.update(overrides)
    return PolicyRequest(workflow="price_change", version="1.1.0", action="pricing.set_price",
                         resource=("Sku", "SKU-1001"), context=context)


changes = st.decimals(min_value=Decimal("-40"), max_value=Decimal("40"), places=2)
writings = st.frozensets(st.sampled_from(DECIMALS))


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(changes, writings, st.booleans()), min_size=1, max_size=30))
def test_a_decision_is_the_same_however_the_context_is_written_and_whatever_came_before_it(
        sequence: list[tuple[Decimal, frozenset[str], bool]]) -> None:
    policies = fresh()
    for change, bare, compensating in sequence:
        decision = policies.evaluate(set_price(change, bare=bare, compensating=compensating))
        assert (decision.outcome, decision.approvals) == expected(change, compensating), (change, bare)


@pytest.mark.parametrize("override", [
    {"abs_change_pct": 12},                          # a Long where a decimal is declared
    {"abs_change_pct": "not a number"},              # a string that is no decimal
    {"compensating": "false"},                       # a String where a Bool is declared
    {"currency": {"__extn": {"fn": "decimal", "arg": "1.0"}}},  # a decimal where a String is declared
    {"extra": True},                                 # an attribute the schema does not declare
    {"abs_change_pct": 12.5},                        # a float: JSON has it, Cedar does not
])
def test_a_misfit_is_refused_even_after_its_action_was_decided_many_times(override: dict) -> None:
    policies = fresh()
    for cents in range(0, 3000, 150):
        policies.evaluate(set_price(Decimal(cents) / 100))
    for change in ("12", "13", "40"):
        with pytest.raises(PolicyContextInvalid, match="pricing.set_price does not fit the schema"):
            policies.evaluate(set_price(Decimal(change), **override))


def test_a_forbid_on_an_action_group_applies_to_its_members(tmp_path: Path) -> None:
    """Without the schema's action hierarchy ``action in Action::"ops.all"`` matches nothing: a forbid on a
    group would never fire (fail-open) and a permit on one would never permit."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "steward.cedarschema").write_text((POLICIES / "steward.cedarschema").read_text() + """
action "ops.all";
action "ops.run", "ops.stop" in ["ops.all"] appliesTo { principal: [WorkflowVersion], resource: [Connector],
  context: { urgent: Bool } };
""")
    (folder / "ops.cedar").write_text("""
@id("ops.members")
@reason("workflows may use the ops actions")
permit (principal, action in Action::"ops.all", resource);

@id("ops.urgent_only_by_hand")
@reason("urgent ops actions are done by a person")
forbid (principal, action in Action::"ops.all", resource) when { context.urgent };
""")
    policies = Policies(Documents.read([folder]))

    def decide(action: str, urgent: bool) -> tuple[str, tuple[str, ...]]:
        decision = policies.evaluate(PolicyRequest(workflow="ops", version="1.0.0", action=action,
                                                   resource=("Connector", "ops"), context={"urgent": urgent}))
        return decision.outcome, decision.policies

    for _ in range(3):
        assert decide("ops.run", False) == ("allow", ("ops.members",))
        assert decide("ops.stop", True) == ("deny", ("ops.urgent_only_by_hand",))
        assert decide("ops.run", True) == ("deny", ("ops.urgent_only_by_hand",))


def test_an_undeclared_action_is_denied_after_declared_ones_were_decided() -> None:
    policies = fresh()
    for _ in range(3):
        assert policies.evaluate(set_price(Decimal("1"))).outcome == "allow"
    decision = policies.evaluate(PolicyRequest(workflow="price_change", version="1.1.0", action="pricing.wipe",
                                               resource=("Sku", "SKU-1001"), context={}))
    assert decision.outcome == "deny" and "not declared in the policy schema" in decision.reason


@pytest.mark.parametrize("malformed", [
    {"__extn": {"fn": "decimal"}},                           # no arg: a record without the schema
    {"__extn": {"fn": "decimal", "argz": "40.0"}},
    {"__extn": {"fn": "decimal", "arg": "40.0", "x": 1}},
    {"__extn": {"fn": "decimal", "arg": 40}},
    {"__extn": {"fn": "decimal", "arg": "40.0"}, "y": 1},
    {"__entity": {"type": "Sku"}},
])
def test_a_malformed_escape_is_refused_even_after_well_formed_ones_of_its_action(malformed: dict) -> None:
    """Read without the schema, a malformed escape is a record, a forbid on it errors and is skipped (a 40 %
    cut would pass): it is refused, or read as the schema reads it, every time."""
    policies = fresh()
    for _ in range(3):
        assert policies.evaluate(set_price(Decimal("1"))).outcome == "allow"
    for _ in range(3):
        try:
            outcome = policies.evaluate(set_price(Decimal("-40"), change_pct=malformed,
                                                  abs_change_pct=malformed)).outcome
        except PolicyContextInvalid:
            outcome = "refused"
        assert outcome in ("refused", "escalate", "deny")  # a 40 % move is never simply allowed


def custom(tmp_path: Path, schema: str, policies: str) -> Policies:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "s.cedarschema").write_text(schema)
    (folder / "p.cedar").write_text(policies)
    return Policies(Documents.read([folder]))


def test_a_record_attribute_named_like_an_escape_is_always_read_through_the_schema(tmp_path: Path) -> None:
    policies = custom(tmp_path, """entity Workflow; entity WorkflowVersion in [Workflow]; entity R;
action "a" appliesTo { principal: [WorkflowVersion], resource: [R],
  context: { x: { "__entity": { type: String, id: String } } } };""", """
@id("p") @reason("r") permit (principal, action, resource);
@id("f") @reason("r") forbid (principal, action, resource) when { context.x.__entity.id == "mallory" };""")

    def decide(who: str) -> str:
        return policies.evaluate(PolicyRequest(workflow="w", version="1", action="a", resource=("R", "r"),
                                               context={"x": {"__entity": {"type": "U", "id": who}}})).outcome

    assert [decide("alice"), decide("mallory"), decide("alice"), decide("mallory")] == \
        ["allow", "deny", "allow", "deny"]


@pytest.mark.parametrize("principal", ["entity WorkflowVersion;", "entity WorkflowVersion in [Workflow] { team: String };"])
def test_a_schema_whose_principal_steward_cannot_name_is_refused_at_load(tmp_path: Path, principal: str) -> None:
    """Steward's principal is a WorkflowVersion in its Workflow: a schema that does not allow that would
    leave the principal without the schema's action hierarchy, and a forbid on a group would never fire."""
    from runtime.errors import PolicyLoadError

    with pytest.raises(PolicyLoadError, match=r"policies/s.cedarschema:1: schema: Steward's principal"):
        custom(tmp_path, f"""entity Workflow; {principal} entity R; action "g";
action "a" in ["g"] appliesTo {{ principal: [WorkflowVersion], resource: [R], context: {{ urgent: Bool }} }};""",
               '@id("p") @reason("r") permit (principal, action, resource);')
