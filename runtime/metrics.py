"""Prometheus metrics: what the engine counts as it works, and what the database says at each scrape.

Counted in the process that did the work (a scrape of every process, summed, is the whole picture):

    steward_runs_finished_total{workflow, version, status}
    steward_run_duration_seconds{workflow, version, status}          created -> ended
    steward_step_duration_seconds{workflow, version, node, status}
    steward_gate_decisions_total{workflow, action, decision}          allow | deny | replay
    steward_connector_calls_total{connector, action, outcome}         ok | <error code>
    steward_connector_retries_total{connector, action}                attempts after the first
    steward_connector_call_seconds{connector, action}
    steward_executor_slots{state}                                     in_use | total (this process)

Read from the database at each scrape (the same for every process; take one):

    steward_runs{workflow, version, status}                           runs not ended, by status
    steward_queue_depth                                               queued runs
    steward_approvals_pending, steward_approvals_pending_oldest_age_seconds

>>> metrics.step_finished(run, node="apply_prices", status="succeeded", seconds=0.12)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("steward.metrics")
REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DURATIONS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86400)

RUNS_FINISHED = Counter("steward_runs_finished_total", "Runs that ended, by workflow, version and status",
                        ["workflow", "version", "status"], registry=REGISTRY)
RUN_SECONDS = Histogram("steward_run_duration_seconds", "From a run's creation to its end (approvals included)",
                        ["workflow", "version", "status"], buckets=_DURATIONS, registry=REGISTRY)
STEP_SECONDS = Histogram("steward_step_duration_seconds", "One execution of one graph node",
                         ["workflow", "version", "node", "status"], buckets=_DURATIONS, registry=REGISTRY)
GATE_DECISIONS = Counter("steward_gate_decisions_total", "The gate's decisions on connector actions",
                         ["workflow", "action", "decision"], registry=REGISTRY)
CONNECTOR_CALLS = Counter("steward_connector_calls_total", "Connector calls made (replays excluded), by outcome",
                          ["connector", "action", "outcome"], registry=REGISTRY)
CONNECTOR_RETRIES = Counter("steward_connector_retries_total", "Attempts after the first, of connector calls",
                            ["connector", "action"], registry=REGISTRY)
CONNECTOR_SECONDS = Histogram("steward_connector_call_seconds", "A connector call, its retries included",
                              ["connector", "action"], buckets=_DURATIONS, registry=REGISTRY)


def run_finished(run: Any, status: str) -> None:
    RUNS_FINISHED.labels(run.workflow, run.version, status).inc()
    created = getattr(run, "created_at", None)
    if created is not None:
        seconds = (datetime.now(timezone.utc) - created).total_seconds()
        RUN_SECONDS.labels(run.workflow, run.version, status).observe(max(seconds, 0.0))


def step_finished(run: Any, *, node: str, status: str, seconds: float) -> None:
    STEP_SECONDS.labels(run.workflow, run.version, node, status).observe(max(seconds, 0.0))


def gate_decision(run: Any, *, action: str, decision: str) -> None:
    GATE_DECISIONS.labels(run.workflow, action, decision).inc()


def connector_call(action: str, *, outcome: str, attempts: int, seconds: float) -> None:
    connector = action.split(".", 1)[0]
    CONNECTOR_CALLS.labels(connector, action, outcome).inc()
    if attempts > 1:
        CONNECTOR_RETRIES.labels(connector, action).inc(attempts - 1)
    CONNECTOR_SECONDS.labels(connector, action).observe(max(seconds, 0.0))


@dataclass(frozen=True)
class Source:
    """What one assembled Steward tells a scrape: its executor's slots (in use, total) and the database's
    counts (``read`` runs ``counts`` as a read-only transaction in the scraping thread)."""

    read: Callable[[Callable[[Any], Any]], Any]
    counts: Callable[[Any], dict[str, Any]]
    slots: Callable[[], tuple[int, int]]


class StewardCollector(Collector):
    """The scrape-time gauges of the Stewards assembled in this process (one, outside tests): slots
    summed, the database counted through the latest one."""

    def __init__(self) -> None:
        self.sources: list[Source] = []

    def describe(self) -> list[Any]:
        return []  # nothing to describe without reading the database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sources = list(self.sources)
        if not sources:
            return
        slots = GaugeMetricFamily("steward_executor_slots", "Runs this process drives now, and can at once",
                                  labels=["state"])
        slots.add_metric(["in_use"], sum(source.slots()[0] for source in sources))
        slots.add_metric(["total"], sum(source.slots()[1] for source in sources))
        yield slots
        up = GaugeMetricFamily("steward_metrics_database_up",
                               "1 when this scrape could read the database gauges below, 0 when it could not")
        try:
            counts = sources[-1].read(sources[-1].counts)
        except Exception:  # noqa: BLE001 - the counters kept in memory matter most during an outage
            log.warning("metrics: the database gauges are unavailable this scrape", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        runs = GaugeMetricFamily("steward_runs", "Runs that have not ended, by status", labels=[
            "workflow", "version", "status"])
        for (workflow, version, status), count in sorted(counts["runs"].items()):
            runs.add_metric([workflow, version, status], count)
        yield runs
        yield GaugeMetricFamily("steward_queue_depth", "Runs queued, waiting for a worker", value=counts["queued"])
        yield GaugeMetricFamily("steward_approvals_pending", "Approval requests waiting for a person",
                                value=counts["approvals_pending"])
        oldest = counts["approvals_oldest"]
        age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily("steward_approvals_pending_oldest_age_seconds",
                                "How long the oldest pending approval request has waited", value=max(age, 0.0))


COLLECTOR = StewardCollector()
REGISTRY.register(COLLECTOR)


def exposition() -> bytes:
    """Every metric in Prometheus' text format (synchronous: scrape-time collectors read the database)."""
    return generate_latest(REGISTRY)
