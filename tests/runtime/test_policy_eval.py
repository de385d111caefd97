"""The evaluator on its own: a decision never depends on how a context value is written (explicit decimal
or a bare string the schema reads as one) or on whether the schema's work was skipped for a shape already
proven to fit; misfits are refused however often a shape was seen; ``action in`` a group sees the
schema's action hierarchy."""

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
    """A set of its own (not the process-wide cached one), so nothing is proven before the test."""
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
        context[name] = f"{value:.4f}" if name in bare else cedar_decimal(value)
    context.update(overrides)
    return PolicyRequest(workflow="price_change", version="1.1.0", action="pricing.set_price",
                         resource=("Sku", "SKU-1001"), context=context)


changes = st.decimals(min_value=Decimal("-40"), max_value=Decimal("40"), places=2)
writings = st.frozensets(st.sampled_from(DECIMALS))


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(changes, writings, st.booleans()), min_size=1, max_size=30))
def test_a_decision_is_the_same_however_the_context_is_written_and_however_often_its_shape_was_seen(
        sequence: list[tuple[Decimal, frozenset[str], bool]]) -> None:
    policies = fresh()
    for change, bare, compensating in sequence:
        decision = policies.evaluate(set_price(change, bare=bare, compensating=compensating))
        assert (decision.outcome, decision.approvals) == expected(change, compensating), (change, bare)


@pytest.mark.parametrize("override", [
    {"abs_change_pct": 12},                          # a Long where a decimal is declared
    {"abs_change_pct": "not a number"},              # a string that is no decimal
    {"compensating": "false"},                       # a String where a Bool is declared
    {"currency": cedar_decimal("1")},                # a decimal where a String is declared
    {"extra": True},                                 # an attribute the schema does not declare
    {"abs_change_pct": 12.5},                        # a float: JSON has it, Cedar does not
])
def test_a_misfit_is_refused_even_after_its_action_was_decided_many_times(override: dict) -> None:
    policies = fresh()
    for cents in range(0, 3000, 150):
        policies.evaluate(set_price(Decimal(cents) / 100))
    for change in ("12", "13", "40"):  # refused each time: a misfit's shape is never taken as proven
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

    for _ in range(3):  # the first of each shape with the schema, the rest without
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
