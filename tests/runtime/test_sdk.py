"""Workflow definitions are checked when constructed; the registry is explicit."""

from __future__ import annotations

import pytest
from langgraph.graph import START, StateGraph
from pydantic import BaseModel

import runtime
from runtime import Owner, Registry, Workflow
from runtime.errors import InputInvalid, WorkflowDefinitionError, WorkflowNotFound
from runtime.sdk import load_registry
from workflows import WORKFLOWS


class In(BaseModel):
    n: int


def build() -> StateGraph:
    graph = StateGraph(dict)
    graph.add_node("work", lambda state: {})
    graph.add_edge(START, "work")
    return graph


GOOD = dict(name="demo_flow", version="1.2.3", owner=Owner(name="Ada Ops", email="ada@example.com"),
            description="does a thing", input_model=In, build=build, grants={"crm.deals.write"})


def test_a_valid_definition_constructs() -> None:
    wf = Workflow(**GOOD)
    assert wf.grants == frozenset({"crm.deals.write"})
    assert isinstance(wf.graph, StateGraph)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"owner": None}, "owner must be Owner"),
        ({"owner": Owner(name=" ", email="ada@example.com")}, "owner must be Owner"),
        ({"owner": Owner(name="Ada", email="not-an-email")}, "owner email 'not-an-email'"),
        ({"version": "1.2"}, "not a semantic version"),
        ({"name": "Bad Name"}, "lower_snake_case"),
        ({"description": ""}, "description"),
        ({"input_model": dict}, "input_model"),
        ({"grants": {"everything"}}, "grant 'everything'"),
    ],
)
def test_bad_definitions_fail_at_construction(change, message) -> None:
    with pytest.raises(WorkflowDefinitionError, match=message):
        Workflow(**{**GOOD, **change})


def test_build_must_return_a_state_graph() -> None:
    wf = Workflow(**{**GOOD, "build": lambda: "graph"})
    with pytest.raises(WorkflowDefinitionError, match="not a langgraph StateGraph"):
        Registry([wf])


def test_a_graph_that_does_not_compile_fails_the_registry_not_a_run() -> None:
    def build() -> StateGraph:
        graph = StateGraph(dict)
        graph.add_node("work", lambda state: {})
        graph.add_edge("work", "nowhere")  # no entry point, and an edge to an unknown node
        return graph

    wf = Workflow(**{**GOOD, "build": build})
    with pytest.raises(WorkflowDefinitionError, match="does not compile"):
        Registry([wf])


def test_registry_lookup_names_the_known_workflows() -> None:
    registry = Registry(WORKFLOWS)
    assert registry.get("price_change").version == "1.2.0"  # the highest loaded (the rollout picks what runs take)
    assert registry.versions("price_change") == ["1.1.0", "1.2.0"]
    with pytest.raises(WorkflowNotFound, match="known: lead_routing, price_change"):
        registry.get("nope")


def test_registry_from_config_strings() -> None:
    assert {wf.name for wf in load_registry(["workflows:WORKFLOWS"])} == {"lead_routing", "price_change"}
    with pytest.raises(WorkflowDefinitionError, match="cannot load"):
        load_registry(["workflows:MISSING"])
    with pytest.raises(WorkflowDefinitionError, match="module:attr"):
        load_registry(["workflows"])


def test_input_errors_list_every_field() -> None:
    with pytest.raises(InputInvalid) as caught:
        Workflow(**GOOD).validate_input({"n": "x", "extra": 1})
    assert [d["loc"] for d in caught.value.details] == [["input", "n"]]


def test_shipped_workflows_have_owners_and_grants() -> None:
    for wf in WORKFLOWS:
        assert "@" in wf.owner.email and wf.grants


def test_exported_members() -> None:
    assert runtime.__all__ == [
        "ApprovalDecision", "ApprovalRejected", "Connector", "ConnectorError", "ConnectorRejected", "ConnectorTransient", "CrmConnector",
        "Effect", "Facts", "InputInvalid", "NonDeterministicReplay", "Owner", "PermissionDenied", "PolicyDenied",
        "PricingConnector", "RecordChecks", "Registry", "RetryPolicy", "Screening", "StepContext", "StewardError",
        "Workflow", "action", "cedar_decimal", "matches", "one_of", "required", "rule", "unique",
    ]
    for name in runtime.__all__:
        assert getattr(runtime, name) is not None
