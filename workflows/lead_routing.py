"""Lead routing: validate an inbound lead, dedupe it against CRM contacts, score it,
assign a sales owner by territory, create a deal and leave a note explaining why.

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

from runtime import Owner, StepContext, Workflow

FREE_MAIL = frozenset({"gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "gmx.de", "web.de", "icloud.com"})
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
    contact_id: str
    duplicate: bool
    score: int
    reasons: list[str]
    owner: dict[str, Any]
    deal_id: str
    note_id: str


def territory(country: str) -> str:
    return "EU" if country in EU else "APAC" if country in APAC else "NA"


async def validate(state: State, runtime: Runtime[StepContext]) -> State:
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


def score_lead(state: State) -> tuple[int, list[str]]:
    score, reasons = 20, ["base 20"]
    employees = state.get("employees") or 0
    if employees >= 1000:
        score, reasons = score + 30, reasons + ["1000+ employees +30"]
    elif employees >= 100:
        score, reasons = score + 20, reasons + ["100+ employees +20"]
    budget = Decimal(state["budget"]) if state.get("budget") else Decimal(0)
    if budget >= 50_000:
        score, reasons = score + 30, reasons + ["budget 50k+ +30"]
    elif budget >= 10_000:
        score, reasons = score + 15, reasons + ["budget 10k+ +15"]
    if state["source"] in ("referral", "partner"):
        score, reasons = score + 15, reasons + [f"{state['source']} source +15"]
    if "free_mail" in state.get("flags", []):
        score, reasons = score - 15, reasons + ["free mail domain -15"]
    return max(0, min(100, score)), reasons


async def score(state: State, runtime: Runtime[StepContext]) -> State:
    value, reasons = score_lead(state)
    return {"score": value, "reasons": reasons}


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
        f"score {state['score']}: {', '.join(state['reasons'])}."
        + (" Existing contact." if state["duplicate"] else " New contact.")
    )
    note = await runtime.context.crm.create_note(body=body, contact_id=state["contact_id"],
                                                 deal_id=state["deal_id"])
    return {"note_id": note["id"]}


def build() -> StateGraph:
    graph = StateGraph(State, context_schema=StepContext)
    steps = [validate, dedupe, score, assign, create_deal, add_note]
    for step in steps:
        graph.add_node(step.__name__, step)
    graph.add_edge(START, steps[0].__name__)
    for before, after in zip(steps, steps[1:]):
        graph.add_edge(before.__name__, after.__name__)
    graph.add_edge(steps[-1].__name__, END)
    return graph


workflow = Workflow(
    name="lead_routing",
    version="1.1.0",  # 1.1.0: territories are HubSpot teams (1.0.0 read a field HubSpot owners do not have)
    owner=Owner(name="Sales Operations Lead", email="sales-ops@example.com"),
    description="Route an inbound lead: dedupe against CRM contacts, score, assign an owner, open a deal, note why.",
    input_model=LeadInput,
    build=build,
    grants={"crm.contacts.read", "crm.contacts.write", "crm.owners.read", "crm.deals.write", "crm.notes.write"},
)
