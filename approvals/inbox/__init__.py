"""The web approval inbox: server-rendered pages under ``/inbox`` (no JavaScript build step).

Mounted by the composition root through ``STEWARD_PAGES`` (default ``approvals.inbox:PAGES``).

>>> create_app(settings, pages=[PAGES])
"""

from approvals.inbox.routes import render_problem, router
from approvals.sessions import DEMO_PASSWORDS
from runtime.api.pages import WebPages

PAGES = WebPages(prefix="/inbox", router=router, render_problem=render_problem, title="approval inbox",
                 demo_logins=tuple(DEMO_PASSWORDS.items()))

__all__ = ["PAGES"]
