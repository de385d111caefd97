"""Logging: plain text by default, or one JSON object a line (``STEWARD_LOG_FORMAT=json``) with the
run id, request id and trace id of whatever the line is about.

    {"time": "2026-11-23T13:45:00.123456+00:00", "level": "WARNING", "logger": "steward.executor",
     "message": "run 4f1c… given back (OperationalError: …)", "run_id": "4f1c…", "request_id": null,
     "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331"}

The ids come from context variables: the executor sets :data:`run_id` while it drives a run, the
HTTP layer sets :data:`request_id` for each request, OpenTelemetry keeps the current span.

>>> configure("json")
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import datetime, timezone

run_id: ContextVar[str | None] = ContextVar("steward_run_id", default=None)
request_id: ContextVar[str | None] = ContextVar("steward_request_id", default=None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": getattr(record, "run_id", None) or run_id.get(),
            "request_id": request_id.get(),
            "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
            "span_id": format(context.span_id, "016x") if context.is_valid else None,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(log_format: str, *, level: int = logging.INFO) -> None:
    """Send every logger (uvicorn's too) to stderr in ``log_format`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
