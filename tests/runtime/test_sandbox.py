"""The sandbox CRM and pricing service: seeded, authenticated, idempotent writes counted per key."""

from __future__ import annotations

from fastapi.testclient import TestClient

from runtime.sandbox import create_sandbox_app

AUTH = {"Authorization": "Bearer sandbox-token"}


def test_seeded_prices_and_auth() -> None:
    client = TestClient(create_sandbox_app())
    assert client.get("/pricing/skus", headers=AUTH).json()["skus"] == [f"SKU-{n}" for n in range(1001, 1011)]
    assert client.get("/pricing/prices/SKU-1010", headers=AUTH).json()["amount"] == "100.00"
    assert client.get("/pricing/prices/SKU-1010").status_code == 401


def test_a_repeated_idempotency_key_replays_without_a_second_write() -> None:
    client = TestClient(create_sandbox_app())
    headers = {**AUTH, "Idempotency-Key": "k1"}
    first = client.post("/crm/crm/v3/objects/deals", json={"properties": {"dealname": "A"}}, headers=headers)
    again = client.post("/crm/crm/v3/objects/deals", json={"properties": {"dealname": "A"}}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert client.get("/_writes").json() == {"total": 1, "writes": {"k1": 1}}
    assert len(client.get("/crm/crm/v3/objects/deals", headers=AUTH).json()["results"]) == 1


def test_search_and_batch_upsert_by_unique_property() -> None:
    client = TestClient(create_sandbox_app())
    body = {"inputs": [{"idProperty": "email", "id": "existing.lead@example.com", "properties": {"phone": "1"}},
                       {"idProperty": "email", "id": "new@example.com", "properties": {"firstname": "N"}}]}
    answer = client.post("/crm/crm/v3/objects/contacts/batch/upsert", json=body, headers=AUTH).json()
    assert answer["status"] == "COMPLETE" and len(answer["results"]) == 2
    search = {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": "NEW@example.com"}]}]}
    found = client.post("/crm/crm/v3/objects/contacts/search", json=search, headers=AUTH).json()
    assert found["total"] == 1 and found["results"][0]["properties"]["firstname"] == "N"


def test_price_validation() -> None:
    client = TestClient(create_sandbox_app())
    negative = client.put("/pricing/prices/SKU-1001", json={"currency": "EUR", "amount": "-1"}, headers=AUTH)
    assert negative.status_code == 422
    assert client.put("/pricing/prices/NOPE", json={"currency": "EUR", "amount": "1"}, headers=AUTH).status_code == 404
