"""Lead routing: screen an inbound lead, dedupe it against CRM contacts, score it,
assign a sales owner by territory, create a deal and leave a note explaining why.

A lead that fails the data-quality checks (a disposable address, a placeholder name)
is quarantined instead of routed; released, it is routed by a new run. The score comes
from a chat model (``lead_scoring``, offline by default: see ``workflows/lead_scoring.py``)
as structured output; an answer that stays invalid or is not confident enough goes to a
person, and the team's rules score the lead when the model gave nothing usable.

Input::

    {"email": "jane@acme.io", "first_name": "Jane", "last_name": "Doe", "company": "Acme",
     "country": "DE", "source": "web", "employees": 250, "budget": "50000"}
"""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

from runtime import Owner, RecordChecks, StepContext, Workflow, rule
from workflows.lead_scoring import FREE_MAIL, LeadScore, OfflineScoringModel, prompt, score_lead

DISPOSABLE = frozenset({"mailinator.com", "guerrillamail.com", "10minutemail.com", "trashmail.com", "yopmail.com",
                        "tempmail.com", "throwawaymail.com"})
PLACEHOLDER_NAMES = frozenset({"test", "testing", "asdf", "qwerty", "xxx", "n/a", "na", "none", "null", "foo", "bar"})
MIN_CONFIDENCE = 0.6
EU = frozenset(
    "AT BE BG CH CY CZ DE DK EE ES FI FR GB GR HR HU IE IS IT LI LT LU LV MT NL NO PL PT RO SE SI SK".split()
)
APAC = frozenset("AU CN HK ID IN JP KR MY NZ PH SG TH TW VN".split())


class Source(str, enum.Enum):
    web = "web"
    event = "event"
    referral = "referral"
    partner = "partner"


class LeadInput(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: EmailStr
    first_name: Annotated[str, Field(min_length=1, max_length=100)]
    last_name: Annotated[str, Field(min_length=1, max_length=100)]
    company: Annotated[str | None, Field(max_length=200)] = None
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2, e.g. DE")]
    source: Source
    employees: Annotated[int | None, Field(ge=1, le=10_000_000)] = None
    budget: Annotated[Decimal | None, Field(ge=0, max_digits=14, decimal_places=2)] = None
    message: Annotated[str | None, Field(max_length=5000)] = None

    @field_validator("email")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class State(TypedDict, total=False):
    email: str
    first_name: str
    last_name: str
    company: str | None
    country: str
    source: str
    employees: int | None
    budget: str | None
    message: str | None
    flags: list[str]
    quarantined: str
    contact_id: str
    duplicate: bool
    score: int
    reasons: list[str]
    scored_by: str
    owner: dict[str, Any]
    deal_id: str
    note_id: str


def territory(country: str) -> str:
    return "EU" if country in EU else "APAC" if country in APAC else "NA"


def disposable_email(lead: dict[str, Any]) -> str | None:
    domain = str(lead.get("email", "")).rsplit("@", 1)[-1].lower()
    return f"{domain} is a disposable mail domain" if domain in DISPOSABLE else None


def placeholder_name(lead: dict[str, Any]) -> str | None:
    for name in ("first_name", "last_name"):
        value = str(lead.get(name) or "").strip()
        if value.lower() in PLACEHOLDER_NAMES or any(ch.isdigit() for ch in value):
            return f"{name} {value!r} looks like a placeholder, not a name"
    return None


LEAD_CHECKS = RecordChecks("lead", rule("disposable_email", disposable_email, field="email"),
                           rule("placeholder_name", placeholder_name), resubmit=dict)


async def validate(state: State, runtime: Runtime[StepContext]) -> State:
    lead = {name: state[name] for name in LeadInput.model_fields if state.get(name) is not None}
    screening = await runtime.context.screen("lead", [lead])
    if screening.quarantined:
        return {"quarantined": screening.quarantined[0]["id"]}
    flags = []
    domain = state["email"].rsplit("@", 1)[1]
    if domain in FREE_MAIL:
        flags.append("free_mail")
    if not state.get("company"):
        flags.append("no_company")
    return {"flags": flags}


async def dedupe(state: State, runtime: Runtime[StepContext]) -> State:
    crm = runtime.context.crm
    found = await crm.search_contacts(email=state["email"])
    if found:
        return {"contact_id": found[0]["id"], "duplicate": True}
    contact = await crm.create_contact(properties={
        "email": state["email"], "firstname": state["first_name"], "lastname": state["last_name"],
        "company": state.get("company"), "country": state["country"], "lifecyclestage": "lead",
    })
    return {"contact_id": contact["id"], "duplicate": False}


async def score(state: State, runtime: Runtime[StepContext]) -> State:
    ctx = runtime.context
    scored = await ctx.structured("lead_score", ctx.model("lead_scoring"), prompt(dict(state)), LeadScore,
                                  min_confidence=MIN_CONFIDENCE)
    if scored.value is not None:
        by = "model" if not scored.escalated else f"model, approved by {', '.join(scored.approval.approved_by)}"
        return {"score": scored.value.score, "reasons": scored.value.reasons, "scored_by": by}
    rules = score_lead({**state, "free_mail": "free_mail" in state.get("flags", [])})
    return {"score": rules.score, "reasons": rules.reasons,
            "scored_by": f"rules (the model gave no valid score; {', '.join(scored.approval.approved_by)} let it go on)"}


async def assign(state: State, runtime: Runtime[StepContext]) -> State:
    owners = await runtime.context.crm.list_owners()
    region = territory(state["country"])
    # A territory is a HubSpot team of the same name ("EU", "APAC", "NA"): owners carry their teams.
    owner = next((o for o in owners if any(team.get("name") == region for team in o.get("teams") or [])), owners[0])
    return {"owner": {"id": owner["id"], "email": owner["email"], "territory": region}}


async def create_deal(state: State, runtime: Runtime[StepContext]) -> State:
    name = state.get("company") or f"{state['first_name']} {state['last_name']}"
    deal = await runtime.context.crm.create_deal(
        properties={
            "dealname": f"{name} — inbound {state['source']}",
            "amount": state.get("budget") or "0",
            "pipeline": "default",
            "dealstage": "qualifiedtobuy" if state["score"] >= 50 else "appointmentscheduled",
            "hubspot_owner_id": state["owner"]["id"],
            "lead_score": str(state["score"]),
        },
        contact_id=state["contact_id"],
    )
    return {"deal_id": deal["id"]}


async def add_note(state: State, runtime: Runtime[StepContext]) -> State:
    body = (
        f"Routed by Steward to {state['owner']['email']} ({state['owner']['territory']}); "
        f"score {state['score']} by {state['scored_by']}: {', '.join(state['reasons'])}."
        + (" Existing contact." if state["duplicate"] else " New contact.")
    )
    note = await runtime.context.crm.create_note(body=body, contact_id=state["contact_id"],
                                                 deal_id=state["deal_id"])
    return {"note_id": note["id"]}


def after_validate(state: State) -> str:
    return END if state.get("quarantined") else "dedupe"


def build() -> StateGraph:
    graph = StateGraph(State, context_schema=StepContext)
    steps = [validate, dedupe, score, assign, create_deal, add_note]
    for step in steps:
        graph.add_node(step.__name__, step)
    graph.add_edge(START, "validate")
    graph.add_conditional_edges("validate", after_validate, ["dedupe", END])
    for before, after in zip(steps[1:], steps[2:]):
        graph.add_edge(before.__name__, after.__name__)
    graph.add_edge(steps[-1].__name__, END)
    return graph


workflow = Workflow(
    name="lead_routing",
    # 1.1.0: territories are HubSpot teams (1.0.0 read a field HubSpot owners do not have);
    # 1.2.0: leads are screened (quarantine) and scored by a chat model as structured output
    version="1.2.0",
    owner=Owner(name="Sales Operations Lead", email="sales-ops@example.com"),
    description="Route an inbound lead: dedupe against CRM contacts, score, assign an owner, open a deal, note why.",
    input_model=LeadInput,
    build=build,
    grants={"crm.contacts.read", "crm.contacts.write", "crm.owners.read", "crm.deals.write", "crm.notes.write"},
    checks=[LEAD_CHECKS],
    models={"lead_scoring": OfflineScoringModel},
)
