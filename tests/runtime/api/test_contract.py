"""The OpenAPI document is the contract: schemathesis drives every operation with generated requests,
valid and invalid, and every answer must be one the document declares (status, content type, headers,
body schema), never a server error. Bounded: a few dozen examples per operation, every check on."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from approvals import api as approvals_api
from runtime.api import audit_routes, quarantine, runs
from runtime.app import create_app
from sandbox import create_sandbox_app
from runtime.service import build_connectors
from runtime.settings import Settings
from tests.fakes import instant_retry

OPERATOR = {"Authorization": "Bearer steward-demo-operator"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "steward.db"
    steward_settings = Settings(database_url=f"sqlite:///{path}", crm_url="http://sandbox/crm",
                                pricing_url="http://sandbox/pricing", demo=True, lease_seconds=5,
                                executor_poll_seconds=0.05, sandbox_path=str(path.with_name("sandbox.db")))
    connectors = build_connectors(steward_settings, transport=httpx.ASGITransport(app=create_sandbox_app()),
                                  retry=instant_retry())
    app = create_app(steward_settings, connectors=connectors)
    with TestClient(app):  # the lifespan opens Steward; schemathesis calls the same app
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def real_cursor(case) -> None:
    """A cursor is opaque: no schema can generate one the server made. A schema-valid request's
    cursor is replaced by one Steward makes for that request's own filters (bad cursors are covered by
    the negative pass and tests/runtime/api/test_paging.py)."""
    if not case.query or "cursor" not in case.query:
        return
    pages, filters, key = {
        "/api/v1/runs": (runs.PAGES, ("status", "workflow"), [datetime.now(timezone.utc), "0" * 32]),
        "/api/v1/approvals": (approvals_api.PAGES, ("status", "run_id", "workflow", "role", "risk", "older_than_hours"),
                              [datetime.now(timezone.utc), "0" * 32]),
        "/api/v1/audit": (audit_routes.PAGES, ("run_id", "after_seq"), [3]),
        "/api/v1/quarantine": (quarantine.PAGES, ("status", "workflow", "kind", "run_id"),
                               [datetime.now(timezone.utc), "0" * 32]),
    }[case.path]
    values = {name: case.query.get(name) for name in filters}
    for number in ("after_seq", "older_than_hours"):
        if values.get(number) is not None or number == "after_seq" and number in values:
            values[number] = int(values[number] or 0)
    case.query["cursor"] = pages.cursor(key, **values)


def test_every_operation_answers_what_the_document_declares(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 13
    failures = []
    for operation, mode in [(op, mode) for op in operations for mode in GenerationMode]:
        # the token is fixed at generation, so an invalid request is never made valid by adding it afterwards
        @given(case=operation.as_strategy(generation_mode=mode, headers=OPERATOR))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def drive(case) -> None:
            if mode is GenerationMode.POSITIVE:
                real_cursor(case)
            case.call_and_validate()

        try:
            drive()
        except Unsatisfiable:  # negative mode, where every value is valid (a free string id): nothing to get wrong
            assert mode is GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as exc:  # every operation is tried; all findings are reported
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
