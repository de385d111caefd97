"""The sandbox: HubSpot's CRM API and a pricing API over a local SQLite file, so a new user sees the
whole flow with no accounts, and tests speak the protocols Steward's connectors speak in production.

``steward serve --demo`` mounts it under ``/sandbox`` (demo mode only); ``steward sandbox`` runs it
alone. See :mod:`sandbox.app` and :mod:`sandbox.hubspot`.
"""

from sandbox.app import SANDBOX_TOKEN, create_sandbox_app
from sandbox.store import SandboxStore

__all__ = ["SANDBOX_TOKEN", "SandboxStore", "create_sandbox_app"]
