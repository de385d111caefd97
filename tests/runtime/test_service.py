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
