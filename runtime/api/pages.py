"""Server-rendered pages beside the API: what the composition root mounts outside ``/api/v1``.

The human layer's web inbox is one (``approvals.inbox:PAGES``, named in ``STEWARD_PAGES``). Its
routes stay out of the OpenAPI document, and an error under its prefix is rendered by the pages
themselves (HTML for a person) from the same problem the API would answer.

>>> PAGES = WebPages(prefix="/inbox", router=router, render_problem=render_problem, title="approval inbox")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

ProblemRenderer = Callable[[Request, Mapping[str, Any], int, Mapping[str, str]], Response]


@dataclass(frozen=True)
class WebPages:
    """WebPages under ``prefix``: their router, and how they show a problem (its RFC 9457 body, its
    status and headers) to a person."""

    prefix: str
    router: APIRouter
    render_problem: ProblemRenderer
    title: str = "pages"
    demo_logins: tuple[tuple[str, str], ...] = ()
    """Demo mode's sign-ins (name, password), printed by ``steward serve --demo``."""

    def owns(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")
