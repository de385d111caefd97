"""The sandbox speaks HubSpot's CRM API as HubSpot documents it (objects, paging, search with every
operator and sorts, batch, owners, associations v4, 409 on duplicates, HubSpot's error body, 429 with
Retry-After), keeps its state across restarts, and Steward's CRM connector works against it unchanged."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from runtime.connectors import CrmConnector
from runtime.connectors.base import start_call
from sandbox import create_sandbox_app
from tests.fakes import instant_retry

AUTH = {"Authorization": "Bearer sandbox-token"}
V3 = "/crm/crm/v3/objects"


@pytest.fixture
def crm() -> TestClient:
    return TestClient(create_sandbox_app(), headers=AUTH)


def hubspot_error(answer: httpx.Response, status: int, category: str) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["status"] == "error" and body["category"] == category and body["message"]
    assert len(body["correlationId"]) == 36
    return body


def test_objects_follow_hubspots_shapes(crm) -> None:
    made = crm.post(f"{V3}/contacts", json={"properties": {"email": "ada@example.com", "firstname": "Ada",
                                                             "jobtitle": "CTO"}})
    assert made.status_code == 201
    contact = made.json()
    assert set(contact) == {"id", "properties", "createdAt", "updatedAt", "archived"}, "no associations unasked"
    assert contact["archived"] is False and contact["properties"]["hs_object_id"] == contact["id"]

    plain = crm.get(f"{V3}/contacts/{contact['id']}").json()
    assert set(plain["properties"]) == {"createdate", "email", "firstname", "hs_object_id", "lastmodifieddate",
                                        "lastname"}, "the default property set, not everything"
    asked = crm.get(f"{V3}/contacts/{contact['id']}", params={"properties": "jobtitle,phone"}).json()
    assert set(asked["properties"]) == {"jobtitle", "phone", "hs_object_id", "createdate", "lastmodifieddate"}
    assert asked["properties"]["jobtitle"] == "CTO" and asked["properties"]["phone"] is None
    by_email = crm.get(f"{V3}/contacts/ADA@example.com", params={"idProperty": "email"}).json()
    assert by_email["id"] == contact["id"]

    patched = crm.patch(f"{V3}/contacts/{contact['id']}", json={"properties": {"lastname": "Lovelace"}}).json()
    assert patched["properties"]["lastname"] == "Lovelace"
    assert crm.delete(f"{V3}/contacts/{contact['id']}").status_code == 204
    hubspot_error(crm.get(f"{V3}/contacts/{contact['id']}"), 404, "OBJECT_NOT_FOUND")
    archived = crm.get(f"{V3}/contacts", params={"archived": "true"}).json()["results"]
    assert [c["id"] for c in archived] == [contact["id"]] and archived[0]["archived"] is True


def test_lists_page_with_paging_next_after(crm) -> None:
    for i in range(23):
        crm.post(f"{V3}/deals", json={"properties": {"dealname": f"D{i:02}", "amount": str(i * 10)}})
    seen, after, pages = [], None, 0
    while True:
        page = crm.get(f"{V3}/deals", params={"limit": 10, **({"after": after} if after else {})}).json()
        seen += [d["properties"]["dealname"] for d in page["results"]]
        pages += 1
        if "paging" not in page:
            break
        after = page["paging"]["next"]["after"]
        assert page["paging"]["next"]["link"].endswith(f"after={after}")
    assert pages == 3 and seen == [f"D{i:02}" for i in range(23)]
    hubspot_error(crm.get(f"{V3}/deals", params={"limit": 101}), 400, "VALIDATION_ERROR")
    hubspot_error(crm.get(f"{V3}/deals", params={"after": "%%%"}), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(("flt", "expected"), [
    ({"propertyName": "amount", "operator": "EQ", "value": "30"}, ["D3"]),
    ({"propertyName": "dealname", "operator": "EQ", "value": "d3"}, ["D3"]),
    ({"propertyName": "amount", "operator": "NEQ", "value": "30"}, ["D0", "D1", "D2", "D4", "D5"]),
    ({"propertyName": "amount", "operator": "LT", "value": "20"}, ["D0", "D1"]),
    ({"propertyName": "amount", "operator": "LTE", "value": "20"}, ["D0", "D1", "D2"]),
    ({"propertyName": "amount", "operator": "GT", "value": "30"}, ["D4"]),
    ({"propertyName": "amount", "operator": "GTE", "value": "30"}, ["D3", "D4"]),
    ({"propertyName": "amount", "operator": "BETWEEN", "value": "10", "highValue": "30"}, ["D1", "D2", "D3"]),
    ({"propertyName": "amount", "operator": "IN", "values": ["0", "40"]}, ["D0", "D4"]),
    ({"propertyName": "amount", "operator": "NOT_IN", "values": ["0", "40"]}, ["D1", "D2", "D3", "D5"]),
    ({"propertyName": "amount", "operator": "HAS_PROPERTY"}, ["D0", "D1", "D2", "D3", "D4"]),
    ({"propertyName": "amount", "operator": "NOT_HAS_PROPERTY"}, ["D5"]),
    ({"propertyName": "description", "operator": "CONTAINS_TOKEN", "value": "renewal"}, ["D1", "D3", "D5"]),
    ({"propertyName": "description", "operator": "CONTAINS_TOKEN", "value": "renew*"}, ["D1", "D3", "D5"]),
    ({"propertyName": "description", "operator": "NOT_CONTAINS_TOKEN", "value": "renewal"}, ["D0", "D2", "D4"]),
])
def test_search_supports_every_documented_operator(crm, flt, expected) -> None:
    for i in range(6):
        props = {"dealname": f"D{i}", "description": "annual renewal deal" if i % 2 else "new business"}
        if i < 5:
            props["amount"] = str(i * 10)
        crm.post(f"{V3}/deals", json={"properties": props})
    body = {"filterGroups": [{"filters": [flt]}], "sorts": [{"propertyName": "dealname", "direction": "ASCENDING"}],
            "properties": ["dealname"], "limit": 100}
    found = crm.post(f"{V3}/deals/search", json=body).json()
    assert [d["properties"]["dealname"] for d in found["results"]] == expected
    assert found["total"] == len(expected)


def test_search_sorts_pages_ors_groups_and_refuses_what_hubspot_refuses(crm) -> None:
    for i in range(12):
        crm.post(f"{V3}/deals", json={"properties": {"dealname": f"D{i:02}", "amount": str(i)}})
    body = {"filterGroups": [{"filters": [{"propertyName": "amount", "operator": "LT", "value": "3"}]},
                             {"filters": [{"propertyName": "amount", "operator": "GT", "value": "8"}]}],
            "sorts": [{"propertyName": "amount", "direction": "DESCENDING"}], "limit": 4, "properties": ["amount"]}
    first = crm.post(f"{V3}/deals/search", json=body).json()
    assert first["total"] == 6 and [d["properties"]["amount"] for d in first["results"]] == ["11", "10", "9", "2"]
    second = crm.post(f"{V3}/deals/search", json={**body, "after": first["paging"]["next"]["after"]}).json()
    assert [d["properties"]["amount"] for d in second["results"]] == ["1", "0"] and "paging" not in second
    shorthand = crm.post(f"{V3}/deals/search", json={"sorts": ["-dealname"], "limit": 1}).json()
    assert shorthand["results"][0]["properties"]["dealname"] == "D11"
    hubspot_error(crm.post(f"{V3}/deals/search", json={"filterGroups": [{"filters": [
        {"propertyName": "amount", "operator": "LIKE", "value": "1"}]}]}), 400, "VALIDATION_ERROR")
    hubspot_error(crm.post(f"{V3}/deals/search", json={"filterGroups": [{"filters": []}] * 6}), 400,
                  "VALIDATION_ERROR")
    hubspot_error(crm.post(f"{V3}/deals/search", json={"limit": 201}), 400, "VALIDATION_ERROR")


def test_batch_create_read_update_upsert_archive(crm) -> None:
    created = crm.post(f"{V3}/contacts/batch/create", json={"inputs": [
        {"properties": {"email": "a@example.com"}}, {"properties": {"email": "b@example.com"}}]})
    assert created.status_code == 201 and created.json()["status"] == "COMPLETE"
    ids = [c["id"] for c in created.json()["results"]]
    read = crm.post(f"{V3}/contacts/batch/read", json={"properties": ["email"], "inputs": [{"id": i} for i in ids]})
    assert [c["properties"]["email"] for c in read.json()["results"]] == ["a@example.com", "b@example.com"]
    partial = crm.post(f"{V3}/contacts/batch/read", json={"inputs": [{"id": ids[0]}, {"id": "999999"}]})
    assert partial.status_code == 207 and partial.json()["errors"][0]["context"]["ids"] == ["999999"]
    by_email = crm.post(f"{V3}/contacts/batch/read", json={"idProperty": "email",
                                                            "inputs": [{"id": "b@example.com"}]}).json()
    assert [c["id"] for c in by_email["results"]] == [ids[1]]
    updated = crm.post(f"{V3}/contacts/batch/update", json={"inputs": [
        {"id": ids[0], "properties": {"firstname": "A"}}]}).json()
    assert updated["results"][0]["properties"]["firstname"] == "A"
    upserted = crm.post(f"{V3}/contacts/batch/upsert", json={"inputs": [
        {"idProperty": "email", "id": "a@example.com", "properties": {"phone": "1"}},
        {"idProperty": "email", "id": "c@example.com", "properties": {"firstname": "C"}}]}).json()
    assert [r["new"] for r in upserted["results"]] == [False, True] and upserted["results"][0]["id"] == ids[0]
    assert crm.post(f"{V3}/contacts/batch/archive", json={"inputs": [{"id": ids[1]}]}).status_code == 204
    hubspot_error(crm.get(f"{V3}/contacts/{ids[1]}"), 404, "OBJECT_NOT_FOUND")
    hubspot_error(crm.post(f"{V3}/contacts/batch/create", json={"inputs": [{"properties": {}}] * 101}), 400,
                  "VALIDATION_ERROR")


def test_a_duplicate_unique_property_is_409_conflict_and_nothing_is_written(crm) -> None:
    body = hubspot_error(crm.post(f"{V3}/contacts", json={"properties": {"email": "EXISTING.lead@example.com"}}),
                         409, "CONFLICT")
    assert body["message"].startswith("Contact already exists. Existing ID: ")
    twice = {"inputs": [{"properties": {"email": "x@example.com"}}, {"properties": {"email": "X@example.com"}}]}
    hubspot_error(crm.post(f"{V3}/contacts/batch/create", json=twice), 409, "CONFLICT")
    found = crm.post(f"{V3}/contacts/search", json={"filterGroups": [{"filters": [
        {"propertyName": "email", "operator": "EQ", "value": "x@example.com"}]}]}).json()
    assert found["total"] == 0, "a refused batch wrote nothing"


def test_owners_list_and_by_id(crm) -> None:
    owners = crm.get("/crm/crm/v3/owners/").json()["results"]
    assert {"id", "email", "firstName", "lastName", "userId", "createdAt", "updatedAt", "archived",
            "teams"} <= set(owners[0])
    one = crm.get(f"/crm/crm/v3/owners/{owners[1]['id']}").json()
    assert one["email"] == owners[1]["email"]
    assert crm.get(f"/crm/crm/v3/owners/{owners[1]['userId']}", params={"idProperty": "userId"}).json()["id"] == one["id"]
    assert [o["id"] for o in crm.get("/crm/crm/v3/owners", params={"email": one["email"]}).json()["results"]] == [one["id"]]
    hubspot_error(crm.get("/crm/crm/v3/owners/999"), 404, "OBJECT_NOT_FOUND")


def test_associations_v4_default_and_list_and_v3_reads_show_them_when_asked(crm) -> None:
    deal = crm.post(f"{V3}/deals", json={"properties": {"dealname": "A"}}).json()
    contact = crm.post(f"{V3}/contacts", json={"properties": {"email": "z@example.com"}}).json()
    made = crm.put(f"/crm/crm/v4/objects/deals/{deal['id']}/associations/default/contacts/{contact['id']}")
    assert made.status_code == 200 and made.json()["status"] == "COMPLETE"
    assert made.json()["results"][0]["associationSpec"] == {"associationCategory": "HUBSPOT_DEFINED",
                                                             "associationTypeId": 3}
    listed = crm.get(f"/crm/crm/v4/objects/contacts/{contact['id']}/associations/deals").json()
    assert listed["results"] == [{"toObjectId": int(deal["id"]), "associationTypes": [
        {"category": "HUBSPOT_DEFINED", "typeId": 4, "label": None}]}]
    read = crm.get(f"{V3}/deals/{deal['id']}", params={"associations": "contacts"}).json()
    assert read["associations"] == {"contacts": {"results": [{"id": contact["id"], "type": "deal_to_contact"}]}}
    note = crm.post(f"{V3}/notes", json={"properties": {"hs_note_body": "hi"}, "associations": [
        {"to": {"id": deal["id"]}, "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214}]}]})
    assert note.status_code == 201 and "associations" not in note.json()
    assert crm.get(f"/crm/crm/v4/objects/deals/{deal['id']}/associations/notes").json()["results"][0][
        "toObjectId"] == int(note.json()["id"])


def test_errors_are_hubspots_body(crm) -> None:
    hubspot_error(TestClient(create_sandbox_app()).get(f"{V3}/contacts"), 401, "INVALID_AUTHENTICATION")
    hubspot_error(crm.get(f"{V3}/tickets"), 404, "OBJECT_NOT_FOUND")
    hubspot_error(crm.post(f"{V3}/contacts", content=b"{oops", headers={"content-type": "application/json"}), 400,
                  "VALIDATION_ERROR")
    hubspot_error(crm.post(f"{V3}/contacts", json={"properties": "no"}), 400, "VALIDATION_ERROR")


def test_rate_limit_answers_429_with_retry_after() -> None:
    limited = TestClient(create_sandbox_app(rate_limit=3), headers=AUTH)
    answers = [limited.get(f"{V3}/contacts") for _ in range(5)]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    body = hubspot_error(answers[3], 429, "RATE_LIMITS")
    assert answers[3].headers["Retry-After"] == "1" and body["policyName"] == "SECONDLY"


async def test_the_connector_retries_a_429_once_and_succeeds(sandbox) -> None:
    class LimitedOnce(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner, self.calls = httpx.ASGITransport(app=sandbox), 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.calls += 1
            if self.calls == 1:
                return httpx.Response(429, headers={"Retry-After": "1"}, json={
                    "status": "error", "message": "You have reached your secondly limit.", "errorType": "RATE_LIMIT",
                    "correlationId": "c0ffee00-0000-0000-0000-000000000000", "policyName": "SECONDLY",
                    "category": "RATE_LIMITS"})
            return await self.inner.handle_async_request(request)

    transport = LimitedOnce()
    sleeps = instant_retry().sleep
    crm = CrmConnector(base_url="http://sandbox/crm", token="sandbox-token", transport=transport,
                       retry=instant_retry(sleep=sleeps))
    call, token = start_call(None)
    try:
        found = await crm.request("POST", "/crm/v3/objects/contacts/search", json={"filterGroups": [{"filters": [
            {"propertyName": "email", "operator": "EQ", "value": "existing.lead@example.com"}]}]})
    finally:
        from runtime.connectors.base import end_call

        end_call(token)
        await crm.aclose()
    assert found["total"] == 1 and transport.calls == 2 and call.attempts == 2
    assert sleeps.waits == [1.0], "Retry-After was honoured"


def test_a_restart_keeps_records_prices_and_idempotency_replies(tmp_path) -> None:
    path = tmp_path / "sandbox.db"
    first = TestClient(create_sandbox_app(path=path), headers=AUTH)
    keyed = {"Idempotency-Key": "k-restart"}
    made = first.post(f"{V3}/contacts", json={"properties": {"email": "kept@example.com"}}, headers=keyed)
    first.put("/pricing/prices/SKU-1002", json={"currency": "EUR", "amount": "130.00"})
    first.app.state.sandbox.close()

    again = TestClient(create_sandbox_app(path=path), headers=AUTH)
    assert again.get(f"{V3}/contacts/{made.json()['id']}").json()["properties"]["email"] == "kept@example.com"
    assert again.get("/pricing/prices/SKU-1002").json()["amount"] == "130.00"
    replayed = again.post(f"{V3}/contacts", json={"properties": {"email": "kept@example.com"}}, headers=keyed)
    assert replayed.status_code == 201 and replayed.json() == made.json()
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert again.get("/_writes").json()["writes"]["k-restart"] == 1
    assert len(again.get("/pricing/skus").json()["skus"]) == 10, "seeded once, not again"


@pytest.mark.parametrize("amount", ["-1", "0", "Infinity", "NaN", "-Infinity", "1e400", "abc", "1e13"])
def test_prices_must_be_finite_positive_decimals(crm, amount) -> None:
    answer = crm.put("/pricing/prices/SKU-1001", json={"currency": "EUR", "amount": amount})
    assert answer.status_code == 422 and answer.json()["status"] == "error", answer.text
    assert crm.get("/pricing/prices/SKU-1001").json()["amount"] == "100.00"


def test_pricing_basics_and_writes_need_the_token(crm) -> None:
    assert crm.get("/pricing/skus").json()["skus"] == [f"SKU-{n}" for n in range(1001, 1011)]
    assert crm.put("/pricing/prices/NOPE", json={"currency": "EUR", "amount": "1"}).status_code == 404
    assert TestClient(create_sandbox_app()).get("/_writes").status_code == 401
    keyed = {"Idempotency-Key": "k1"}
    first = crm.put("/pricing/prices/SKU-1003", json={"currency": "eur", "amount": "101.5"}, headers=keyed)
    again = crm.put("/pricing/prices/SKU-1003", json={"currency": "EUR", "amount": "101.5"}, headers=keyed)
    assert first.json() == again.json() and first.json()["amount"] == "101.50"
    assert crm.get("/_writes").json() == {"total": 1, "writes": {"k1": 1}}
