"""The one retry layer: transient failures retried with backoff, Retry-After honoured and capped."""

from __future__ import annotations

import httpx
import pytest
import respx

from runtime.connectors import PricingConnector, RetryPolicy
from runtime.connectors.base import end_call, parse_retry_after, start_call
from runtime.errors import ConnectorRejected, ConnectorTransient
from tests.fakes import RecordingSleep

URL = "http://pricing.test/prices/SKU-1001"


def connector(sleep: RecordingSleep, attempts: int = 4) -> PricingConnector:
    policy = RetryPolicy(attempts=attempts, initial_wait=0.5, max_wait=5.0, sleep=sleep)
    return PricingConnector(base_url="http://pricing.test", token="secret", retry=policy)


@respx.mock
async def test_5xx_then_success_is_retried_with_jittered_backoff() -> None:
    route = respx.get(URL).mock(side_effect=[httpx.Response(503), httpx.Response(502), httpx.Response(200, json={"a": 1})])
    sleep = RecordingSleep()
    assert await connector(sleep).request("GET", "/prices/SKU-1001") == {"a": 1}
    assert route.call_count == 3
    assert len(sleep.waits) == 2
    assert 0 <= sleep.waits[0] <= 0.5 and 0 <= sleep.waits[1] <= 1.0


@respx.mock
async def test_retry_after_is_honoured_and_capped() -> None:
    respx.get(URL).mock(side_effect=[
        httpx.Response(429, headers={"Retry-After": "2"}),
        httpx.Response(429, headers={"Retry-After": "3600"}),
        httpx.Response(200, json={}),
    ])
    sleep = RecordingSleep()
    await connector(sleep).request("GET", "/prices/SKU-1001")
    assert sleep.waits == [2.0, 5.0]


@respx.mock
async def test_4xx_is_not_retried() -> None:
    route = respx.put(URL).mock(return_value=httpx.Response(422, json={"detail": "bad amount"}))
    sleep = RecordingSleep()
    with pytest.raises(ConnectorRejected, match="422") as caught:
        await connector(sleep).request("PUT", "/prices/SKU-1001", json={"amount": "x"})
    assert caught.value.status == 422 and route.call_count == 1 and sleep.waits == []


@respx.mock
async def test_timeouts_and_network_errors_exhaust_attempts() -> None:
    route = respx.get(URL).mock(side_effect=[httpx.ConnectTimeout("slow"), httpx.ConnectError("down"),
                                             httpx.ReadTimeout("slow")])
    sleep = RecordingSleep()
    with pytest.raises(ConnectorTransient, match="timed out"):
        await connector(sleep, attempts=3).request("GET", "/prices/SKU-1001")
    assert route.call_count == 3 and len(sleep.waits) == 2


@respx.mock
async def test_writes_carry_the_same_idempotency_key_on_every_attempt_and_no_secret_leaks() -> None:
    route = respx.put(URL).mock(side_effect=[httpx.Response(500), httpx.Response(200, json={})])
    state, token = start_call("key-123")
    try:
        await connector(RecordingSleep()).request("PUT", "/prices/SKU-1001", json={"amount": "1.00"})
    finally:
        end_call(token)
    keys = [call.request.headers.get("Idempotency-Key") for call in route.calls]
    assert keys == ["key-123", "key-123"]
    assert state.attempts == 2 and state.last_status == 200
    assert route.calls[0].request.headers["Authorization"] == "Bearer secret"


@respx.mock
async def test_reads_carry_no_idempotency_key() -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(200, json={}))
    _, token = start_call("key-123")
    try:
        await connector(RecordingSleep()).request("GET", "/prices/SKU-1001")
    finally:
        end_call(token)
    assert "Idempotency-Key" not in route.calls[0].request.headers


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") < 0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


async def test_actions_outside_a_step_are_refused() -> None:
    from runtime.errors import StewardError

    with pytest.raises(StewardError, match="outside a Steward step"):
        await connector(RecordingSleep()).get_price(sku="SKU-1001", currency="EUR")


def test_actions_declare_scope_effect_and_inverse() -> None:
    from runtime.connectors import CrmConnector, Effect

    spec = CrmConnector.actions()["create_deal"]
    assert (spec.name, spec.scope, spec.effect, spec.inverse) == (
        "crm.create_deal", "crm.deals.write", Effect.write, "archive_deal")
    assert PricingConnector.actions()["get_price"].effect is Effect.read
