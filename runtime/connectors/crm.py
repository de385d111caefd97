"""CRM connector, shaped after HubSpot's CRM v3 REST API (objects, search, batch upsert).

>>> found = await runtime.context.crm.search_contacts(email="ada@example.com")
>>> deal = await runtime.context.crm.create_deal(properties={"dealname": "Ada", "amount": "1200"})
"""

from __future__ import annotations

from typing import Any

from runtime.connectors.base import Connector, Effect, action

OBJECTS = "/crm/v3/objects"


def _associate(to_id: str | None, type_id: int) -> list[dict[str, Any]]:
    if not to_id:
        return []
    return [{"to": {"id": to_id}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]}]


class CrmConnector(Connector):
    name = "crm"

    @action(scope="crm.contacts.read", effect=Effect.read)
    async def search_contacts(self, *, email: str, limit: int = 10) -> list[dict[str, Any]]:
        body = {
            "filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": email}]}],
            "limit": limit,
        }
        return (await self.request("POST", f"{OBJECTS}/contacts/search", json=body))["results"]

    @action(scope="crm.contacts.write", effect=Effect.write, inverse="archive_contact")
    async def create_contact(self, *, properties: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", f"{OBJECTS}/contacts", json={"properties": properties})

    @action(scope="crm.contacts.write", effect=Effect.write)
    async def upsert_contacts(self, *, inputs: list[dict[str, Any]], id_property: str = "email") -> dict[str, Any]:
        """Batch upsert by a unique property: ``inputs`` are ``{"id": value, "properties": {...}}``."""
        body = {"inputs": [{"idProperty": id_property, **item} for item in inputs]}
        return await self.request("POST", f"{OBJECTS}/contacts/batch/upsert", json=body)

    @action(scope="crm.contacts.write", effect=Effect.write)
    async def archive_contact(self, *, contact_id: str) -> None:
        await self.request("DELETE", f"{OBJECTS}/contacts/{contact_id}")

    @action(scope="crm.owners.read", effect=Effect.read)
    async def list_owners(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/crm/v3/owners"))["results"]

    @action(scope="crm.deals.write", effect=Effect.write, inverse="archive_deal")
    async def create_deal(self, *, properties: dict[str, Any], contact_id: str | None = None) -> dict[str, Any]:
        body = {"properties": properties, "associations": _associate(contact_id, 3)}
        return await self.request("POST", f"{OBJECTS}/deals", json=body)

    @action(scope="crm.deals.write", effect=Effect.write)
    async def update_deal(self, *, deal_id: str, properties: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", f"{OBJECTS}/deals/{deal_id}", json={"properties": properties})

    @action(scope="crm.deals.write", effect=Effect.write)
    async def archive_deal(self, *, deal_id: str) -> None:
        await self.request("DELETE", f"{OBJECTS}/deals/{deal_id}")

    @action(scope="crm.notes.write", effect=Effect.write, inverse="archive_note")
    async def create_note(
        self, *, body: str, contact_id: str | None = None, deal_id: str | None = None
    ) -> dict[str, Any]:
        payload = {
            "properties": {"hs_note_body": body},
            "associations": _associate(contact_id, 202) + _associate(deal_id, 214),
        }
        return await self.request("POST", f"{OBJECTS}/notes", json=payload)

    @action(scope="crm.notes.write", effect=Effect.write)
    async def archive_note(self, *, note_id: str) -> None:
        await self.request("DELETE", f"{OBJECTS}/notes/{note_id}")
