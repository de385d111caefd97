"""CRM connector, shaped after HubSpot's CRM v3 REST API (objects, search, batch upsert).

>>> found = await runtime.context.crm.search_contacts(email="ada@example.com")
>>> deal = await runtime.context.crm.create_deal(properties={"dealname": "Ada", "amount": "1200"})
"""

from __future__ import annotations

import zoneinfo
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from runtime.connectors.base import Connector, Effect, action
from runtime.errors import PolicyContextInvalid
from runtime.policy import cedar_decimal

if TYPE_CHECKING:
    from runtime.facts import Facts

OBJECTS = "/crm/v3/objects"
SINGLE_SEND = "/marketing/v3/transactional/single-email/send"
CREATES = {"Contact": ("crm.create_contact",), "Deal": ("crm.create_deal",), "Note": ("crm.create_note",)}


async def deal_context(facts: Facts, arguments: dict[str, Any]) -> dict[str, Any]:
    """The deal amount the call sets, if it sets one (HubSpot amounts are decimal strings)."""
    raw = (arguments.get("properties") or {}).get("amount")
    if raw in (None, ""):
        return {"has_amount": False, "amount": cedar_decimal(0)}
    try:
        amount = Decimal(str(raw).replace(",", ""))
    except InvalidOperation:
        raise PolicyContextInvalid(f"deal amount {raw!r} is not a number such as '1200.00'") from None
    return {"has_amount": True, "amount": cedar_decimal(amount)}


def archive_context(kind: str, id_argument: str) -> Any:
    async def build(facts: Facts, arguments: dict[str, Any]) -> dict[str, Any]:
        return {"compensating": facts.compensating,
                "created_by_run": facts.created_by_run(CREATES[kind], arguments[id_argument])}
    return build


def iana_zone(hubspot_zone: Any) -> zoneinfo.ZoneInfo | None:
    """HubSpot's ``hs_timezone`` ("europe_slash_berlin") as a time zone, None when unknown."""
    if not isinstance(hubspot_zone, str) or not hubspot_zone:
        return None
    parts = hubspot_zone.split("_slash_")
    name = "/".join("_".join(word.capitalize() if word not in ("of", "es", "au") else word
                             for word in part.split("_")) for part in parts)
    head, _, rest = name.partition("/")
    for candidate in (name, f"{head.upper()}/{rest}" if len(head) == 2 else name, hubspot_zone):
        try:
            return zoneinfo.ZoneInfo(candidate)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            continue
    return None


async def email_context(facts: Facts, arguments: dict[str, Any]) -> dict[str, Any]:
    """Who receives the message and when it is for them: the recipient's time zone and country from
    their CRM contact (read now), and this workflow's messages this hour (a counter in the database)."""
    to = arguments["to"]
    found = await facts.read("search_contacts", email=to, limit=1, properties=["hs_timezone", "country"])
    props = found[0].get("properties", {}) if found else {}
    zone = iana_zone(props.get("hs_timezone"))
    local = facts.now().astimezone(zone or zoneinfo.ZoneInfo("UTC"))
    recipients = 1 + len(arguments.get("cc") or []) + len(arguments.get("bcc") or [])
    return {"recipient_count": recipients, "messages_this_hour": await facts.count("messages"),
            "local_hour": local.hour, "timezone": zone.key if zone else "UTC", "timezone_known": zone is not None,
            "jurisdiction": str(props.get("country") or "").upper()[:2]}


def _associate(to_id: str | None, type_id: int) -> list[dict[str, Any]]:
    if not to_id:
        return []
    return [{"to": {"id": to_id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]}]


class CrmConnector(Connector):
    name = "crm"

    @action(scope="crm.contacts.read", effect=Effect.read)
    async def search_contacts(self, *, email: str, limit: int = 10,
                              properties: list[str] | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {
            "filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}],
            "limit": limit,
        }
        if properties:
            body["properties"] = properties
        return (await self.request("POST", f"{OBJECTS}/contacts/search", json=body))["results"]

    @action(scope="crm.contacts.write", effect=Effect.write, inverse="archive_contact",
            resource=lambda a: ("Contact", "new"), editable=("properties",))
    async def create_contact(self, *, properties: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", f"{OBJECTS}/contacts", json={"properties": properties})

    @action(scope="crm.contacts.write", effect=Effect.write, resource=lambda a: ("Contact", "new"))
    async def upsert_contacts(self, *, inputs: list[dict[str, Any]], id_property: str = "email") -> dict[str, Any]:
        """Batch upsert by a unique property: ``inputs`` are ``{"id": value, "properties": {...}}``."""
        body = {"inputs": [{"idProperty": id_property, **item} for item in inputs]}
        return await self.request("POST", f"{OBJECTS}/contacts/batch/upsert", json=body)

    @action(scope="crm.contacts.write", effect=Effect.write, resource=lambda a: ("Contact", a["contact_id"]),
            context=archive_context("Contact", "contact_id"))
    async def archive_contact(self, *, contact_id: str) -> None:
        await self.request("DELETE", f"{OBJECTS}/contacts/{contact_id}")

    @action(scope="crm.owners.read", effect=Effect.read)
    async def list_owners(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/crm/v3/owners"))["results"]

    @action(scope="crm.deals.write", effect=Effect.write, inverse="archive_deal",
            resource=lambda a: ("Deal", "new"), context=deal_context, editable=("properties",))
    async def create_deal(self, *, properties: dict[str, Any], contact_id: str | None = None) -> dict[str, Any]:
        body = {"properties": properties, "associations": _associate(contact_id, 3)}
        return await self.request("POST", f"{OBJECTS}/deals", json=body)

    @action(scope="crm.deals.read", effect=Effect.read, resource=lambda a: ("Deal", a["deal_id"]))
    async def get_deal(self, *, deal_id: str, properties: list[str] | None = None) -> dict[str, Any]:
        """One deal as HubSpot returns it (``{"id", "properties": {...}, ...}``), with ``properties``."""
        params = {"properties": ",".join(properties)} if properties else None
        return await self.request("GET", f"{OBJECTS}/deals/{deal_id}", params=params)

    @action(scope="crm.deals.write", effect=Effect.write, resource=lambda a: ("Deal", a["deal_id"]),
            context=deal_context,
            current=lambda a: ("get_deal", {"deal_id": a["deal_id"], "properties": sorted(a["properties"])}),
            editable=("properties",))
    async def update_deal(self, *, deal_id: str, properties: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", f"{OBJECTS}/deals/{deal_id}", json={"properties": properties})

    @action(scope="crm.deals.write", effect=Effect.write, resource=lambda a: ("Deal", a["deal_id"]),
            context=archive_context("Deal", "deal_id"))
    async def archive_deal(self, *, deal_id: str) -> None:
        await self.request("DELETE", f"{OBJECTS}/deals/{deal_id}")

    @action(scope="crm.notes.write", effect=Effect.write, inverse="archive_note",
            resource=lambda a: ("Note", "new"), editable=("body",))
    async def create_note(
        self, *, body: str, contact_id: str | None = None, deal_id: str | None = None
    ) -> dict[str, Any]:
        payload = {
            "properties": {"hs_note_body": body},
            "associations": _associate(contact_id, 202) + _associate(deal_id, 214),
        }
        return await self.request("POST", f"{OBJECTS}/notes", json=payload)

    @action(scope="crm.notes.write", effect=Effect.write, resource=lambda a: ("Note", a["note_id"]),
            context=archive_context("Note", "note_id"))
    async def archive_note(self, *, note_id: str) -> None:
        await self.request("DELETE", f"{OBJECTS}/notes/{note_id}")

    @action(scope="crm.emails.send", effect=Effect.message, resource=lambda a: ("Recipient", a["to"]),
            context=email_context, editable=("contact_properties", "custom_properties"))
    async def send_email(
        self, *, email_id: int, to: str, cc: list[str] | None = None, bcc: list[str] | None = None,
        contact_properties: dict[str, str] | None = None, custom_properties: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send a published transactional e-mail (HubSpot's single-send API) to one customer."""
        message: dict[str, Any] = {"to": to}
        if cc:
            message["cc"] = cc
        if bcc:
            message["bcc"] = bcc
        body = {"emailId": email_id, "message": message, "contactProperties": contact_properties or {},
                "customProperties": custom_properties or {}}
        return await self.request("POST", SINGLE_SEND, json=body)
