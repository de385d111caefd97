"""Steward's configuration: one pydantic-settings class, read once at start-up.

Every field can be set by an environment variable named ``STEWARD_<FIELD>``
(for example ``STEWARD_DATABASE_URL``) or in a ``.env`` file.

>>> settings = Settings(database_url="sqlite:///./other.db")
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SANDBOX_TOKEN = "sandbox-token"
POLICIES = Path(__file__).resolve().parent.parent / "policies"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEWARD_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "sqlite:///./steward.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    demo: bool = Field(False, description="Demo mode: seeds a demo token and allows sandbox secrets")

    workflows: list[str] = Field(
        default_factory=lambda: ["workflows:WORKFLOWS"],
        description="module:attr strings naming a Workflow or a list of them",
    )
    routers: list[str] = Field(
        default_factory=lambda: ["approvals.api:router"],
        description="module:attr strings naming extra FastAPI routers to mount under /api/v1",
    )

    pages: list[str] = Field(
        default_factory=lambda: ["approvals.inbox:PAGES"],
        description="module:attr strings naming server-rendered pages (runtime.api.pages.WebPages) to mount",
    )
    session_idle_minutes: float = Field(30.0, gt=0, description="An inbox session unused this long ends")
    session_absolute_hours: float = Field(8.0, gt=0, description="An inbox session ends this long after sign-in")
    sign_in_attempts: int = Field(5, ge=1, description=(
        "Failed inbox sign-ins allowed per name and per client address within sign_in_window_minutes; "
        "more answer 429 with Retry-After"))
    sign_in_window_minutes: float = Field(15.0, gt=0)

    sweeps: list[str] = Field(default_factory=lambda: ["runtime.rollout:guard", "approvals.sla:sweep"], description=(
        "module:attr naming async functions (steward, now) the executor calls every sweep_seconds: rollout "
        "guards (automatic rollback), the approvals' reminders, escalations, expiries and notifications"))
    sweep_seconds: float = Field(30.0, gt=0, description="How often executors run the sweeps")
    notify_webhook_url: str = Field("", description=(
        "Where notifications (approval reminders, escalations, expiries) are POSTed as JSON, signed with "
        "HMAC-SHA256 in the Steward-Signature header; empty: none are sent (the audit trail still has them)"))
    notify_webhook_secret: str = Field("", description="The HMAC key; required with notify_webhook_url")
    notify_smtp_host: str = Field("", description=(
        "An SMTP server that mails each notification to its recipients as well (the deciders' and the owners' "
        "email addresses); empty: no email"))
    notify_smtp_port: int = Field(587, ge=1, le=65535)
    notify_smtp_tls: Literal["starttls", "ssl", "none"] = Field("starttls", description=(
        "starttls (port 587), ssl (implicit TLS, port 465) or none (a relay on the same host only)"))
    notify_smtp_username: str = Field("", description="Sign in to the SMTP server as this user (empty: no sign-in)")
    notify_smtp_password: str = Field("", description="With notify_smtp_username")
    notify_smtp_from: str = Field("", description="The sender address; required with notify_smtp_host")
    public_url: str = Field("", description=(
        "Where people reach this server (https://steward.example.com), for the inbox links in notifications; "
        "empty: the links are paths"))

    policies: list[Path] = Field(default_factory=lambda: [POLICIES], description=(
        "Folders of Cedar policies (*.cedar) and schemas (*.cedarschema), loaded together; start-up "
        "stops on any malformed file (default: the policies/ folder shipped with Steward)"))

    models: dict[str, str] = Field(default_factory=dict, description=(
        "Chat models by the name workflows ask for (runtime.context.model(name)): module:attr naming a "
        "langchain-core BaseChatModel or a function returning one, e.g. "
        "'{\"lead_scoring\": \"mycompany.models:scoring_model\"}'; a name not given here takes the "
        "workflow's own default (the shipped workflows' defaults run offline)"))

    approvals: str = Field(
        "approvals.store:PORT",
        description="module:attr naming the approval port (runtime.approval.ApprovalPort) the engine asks",
    )
    demo_runs: list[str] = Field(default_factory=list, description=(
        "module:attr strings naming runs to start once as the demo operator ([{key, workflow, input}]); "
        "`steward serve --demo` names workflows.demo:RUNS so the inbox has work on the first visit"))
    mount_sandbox: bool | None = Field(None, description=(
        "Serve the sandbox CRM and pricing service under /sandbox (default: in demo mode only)"))
    sandbox_path: str = Field("steward-sandbox.db", description="The mounted sandbox's own SQLite file")
    crm_url: str = Field("", description="Default: this server's own sandbox, /sandbox/crm")
    crm_token: str = SANDBOX_TOKEN
    pricing_url: str = Field("", description="Default: this server's own sandbox, /sandbox/pricing")
    pricing_token: str = SANDBOX_TOKEN

    http_timeout_seconds: float = Field(10.0, gt=0)
    retry_attempts: int = Field(5, ge=1, le=20)
    retry_initial_wait_seconds: float = Field(0.2, ge=0)
    retry_max_wait_seconds: float = Field(30.0, ge=0, description="Cap on one backoff, Retry-After included")

    log_format: Literal["text", "json"] = Field("text", description=(
        "text, or json: one object a line with run_id, request_id and trace_id"))
    token_cache_seconds: float = Field(1.0, ge=0, le=1.0, description=(
        "How long the server remembers who a bearer token belongs to; a revoked token stops working "
        "within this (at most a second)"))

    executor_concurrency: int = Field(8, ge=1)
    executor_poll_seconds: float = Field(1.0, gt=0)
    lease_seconds: float = Field(30.0, gt=0, description="A running run whose worker stops renewing is taken over after this")

    @model_validator(mode="after")
    def _sandbox_urls(self) -> "Settings":
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        for name in ("crm", "pricing"):
            if not getattr(self, f"{name}_url"):
                setattr(self, f"{name}_url", f"http://{host}:{self.port}/sandbox/{name}")
        return self

    @model_validator(mode="after")
    def _no_default_secrets_outside_demo(self) -> "Settings":
        if self.demo:
            return self
        for name in ("crm", "pricing"):
            url, token = getattr(self, f"{name}_url"), getattr(self, f"{name}_token")
            if token == SANDBOX_TOKEN and "/sandbox" not in url:
                raise ValueError(
                    f"STEWARD_{name.upper()}_TOKEN is the sandbox default but STEWARD_{name.upper()}_URL "
                    f"points at {url!r}; set a real token or use STEWARD_DEMO=true"
                )
        return self

    @model_validator(mode="after")
    def _webhook_needs_a_secret(self) -> "Settings":
        if self.notify_webhook_url and len(self.notify_webhook_secret) < 16:
            raise ValueError("STEWARD_NOTIFY_WEBHOOK_URL needs STEWARD_NOTIFY_WEBHOOK_SECRET (at least 16 "
                             "characters): the receiver checks each notification's signature with it")
        return self

    @model_validator(mode="after")
    def _email_needs_a_sender(self) -> "Settings":
        if self.notify_smtp_host and "@" not in self.notify_smtp_from:
            raise ValueError("STEWARD_NOTIFY_SMTP_HOST needs STEWARD_NOTIFY_SMTP_FROM, the sender's address "
                             "(steward@example.com)")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError(f"STEWARD_PUBLIC_URL must start with http:// or https://, not {self.public_url!r}")
        return self

    def notify_channels(self) -> tuple[str, ...]:
        """Where notifications go: ``webhook`` and ``email`` when configured."""
        return tuple(name for name, on in (("webhook", self.notify_webhook_url), ("email", self.notify_smtp_host)) if on)

    @property
    def sandbox_mounted(self) -> bool:
        return self.demo if self.mount_sandbox is None else self.mount_sandbox

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
