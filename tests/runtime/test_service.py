"""Start-up checks: schema revision, telemetry exporter choice."""

from __future__ import annotations

import pytest

from runtime.db import Database
from runtime.service import DatabaseNotMigrated, check_migrated
from runtime.telemetry import TelemetryConfigInvalid, _exporters


def test_a_server_refuses_a_database_behind_its_code(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(DatabaseNotMigrated, match="run `steward db upgrade`"):
        check_migrated(db)
    db.upgrade()
    check_migrated(db)


@pytest.mark.parametrize(
    ("value", "kinds"),
    [
        ("none", []),
        ("console", ["ConsoleSpanExporter"]),
        ("otlp", ["OTLPSpanExporter"]),
        ("console,otlp", ["ConsoleSpanExporter", "OTLPSpanExporter"]),
    ],
)
def test_the_exporter_follows_otel_traces_exporter(monkeypatch, value, kinds) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    exporters = _exporters()
    try:
        assert [type(e).__name__ for e in exporters] == kinds
    finally:
        for exporter in exporters:
            exporter.shutdown()


def test_an_unknown_exporter_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(TelemetryConfigInvalid, match="'jaeger' is not one of none, console, otlp"):
        _exporters()


def test_sandbox_secrets_are_refused_for_real_systems_outside_demo_mode() -> None:
    from pydantic import ValidationError

    from runtime.settings import Settings

    with pytest.raises(ValidationError, match="STEWARD_CRM_TOKEN is the sandbox default"):
        Settings(crm_url="https://crm.example.com", demo=False)
    assert Settings(crm_url="https://crm.example.com", demo=True).crm_token == "sandbox-token"
    assert Settings(crm_url="https://crm.example.com", crm_token="real", demo=False).crm_token == "real"
    assert Settings(port=9000).pricing_url == "http://127.0.0.1:9000/sandbox/pricing"
