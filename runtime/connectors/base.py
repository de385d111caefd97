"""Connector machinery: declared actions, and HTTP calls with one retry layer.

An action is an async method declared with :func:`action`: its scope, its
side-effect kind, and its inverse (for compensation). Calling it on a connector
bound to a run sends it through the governance gate; the gate then calls the
method's body, whose HTTP requests go through :meth:`Connector.request` (tenacity
retries on network errors, timeouts, 429 and 5xx; Retry-After honoured and capped;
the call's ``Idempotency-Key`` header on writes).

>>> class Tickets(Connector):
...     name = "tickets"
...     @action(scope="tickets.write", effect=Effect.WRITE, inverse="close")
...     async def open(self, *, title: str) -> dict:
...         return await self.request("POST", "/tickets", json={"title": title})
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import enum
import functools
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import httpx
from opentelemetry.propagate import inject
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from runtime.errors import (
    ConnectorRejected,
    ConnectorTransient,
    StewardError,
    is_retryable,
)
from runtime.models import utcnow

if TYPE_CHECKING:
    from runtime.facts import Facts
    from runtime.gate import Gate


class Effect(str, enum.Enum):
    """What an action does to the outside world."""

    read = "read"
    write = "write"
    message = "outbound_message"

    @property
    def has_side_effect(self) -> bool:
        return self is not Effect.read


Resource = Callable[[dict[str, Any]], tuple[str, str]]
Current = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]
ContextBuilder = Callable[["Facts", dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ActionSpec:
    """An action's declaration: ``connector.method``, its scope, effect and inverse, and how a call of it
    is described to the policies: the resource it acts on and its context (see :mod:`runtime.facts`)."""

    connector: str
    method: str
    scope: str
    effect: Effect
    inverse: str | None = None
    requires_approval: bool = False
    resource: Resource | None = field(default=None, compare=False)
    context: ContextBuilder | None = field(default=None, compare=False)
    current: Current | None = field(default=None, compare=False)
    editable: tuple[str, ...] = ()
    """The arguments an approver may change when a call of this action waits for approval."""

    def policy_resource(self, arguments: dict[str, Any]) -> tuple[str, str]:
        """The Cedar resource of a call: the action's own, or the connector as a whole."""
        return self.resource(arguments) if self.resource is not None else ("Connector", self.connector)

    @property
    def name(self) -> str:
        return f"{self.connector}.{self.method}"


@dataclass
class CallState:
    """What the gate tells the HTTP layer about the call in progress (per asyncio task)."""

    idempotency_key: str | None
    attempts: int = 0
    last_status: int | None = None


_current_call: contextvars.ContextVar[CallState | None] = contextvars.ContextVar("steward_call", default=None)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def action(
    *, scope: str, effect: Effect, inverse: str | None = None, requires_approval: bool = False,
    resource: Resource | None = None, context: ContextBuilder | None = None, current: Current | None = None,
    editable: tuple[str, ...] = (),
) -> Callable[[F], F]:
    """Declare a connector method as a governed action (keyword-only arguments, JSON-safe).

    ``current(arguments)`` names the read that shows the record a write changes, as it is now: the
    connector's read action and its arguments (``("get_price", {"sku": ...})``); an approver sees the
    write's arguments against it (before/after).

    ``resource(arguments)`` names what a call acts on as a Cedar entity (``("Sku", "SKU-1001")``;
    default: the connector); ``context(facts, arguments)`` builds the record the policies read, as the
    action's entry in the policy schema declares it (default: empty).

    ``editable`` names the arguments an approver may change when a call waits for approval ("edit
    within policy", e.g. a price's ``amount``); the others, and any action that names none, are approved
    or rejected as the step proposed them. Name only values, never what says which record or person
    the call acts on."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def governed(self: Connector, **arguments: Any) -> Any:
            spec = type(self).actions()[fn.__name__]
            if self._gate is None:
                raise StewardError(
                    f"{spec.name} was called outside a Steward step: use runtime.context.{self.name} inside a node"
                )
            return await self._gate.call(spec, arguments, lambda called: fn(self, **called), connector=self)

        governed.__steward_action__ = {  # type: ignore[attr-defined]
            "scope": scope,
            "effect": Effect(effect),
            "inverse": inverse,
            "requires_approval": requires_approval,
            "resource": resource,
            "context": context,
            "current": current,
            "editable": tuple(editable),
        }
        return governed  # type: ignore[return-value]

    return decorate


def find_action(connectors: Mapping[str, Connector], name: str) -> tuple[Connector | None, ActionSpec | None]:
    """The connector and the declaration of the action ``connector.method`` (None for what is not there)."""
    connector_name, _, method = name.partition(".")
    connector = connectors.get(connector_name)
    return connector, type(connector).actions().get(method) if connector is not None else None


Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """One retry layer: attempts, jittered exponential backoff, Retry-After capped by ``max_wait``."""

    attempts: int = 5
    initial_wait: float = 0.2
    max_wait: float = 30.0
    sleep: Sleep = field(default=asyncio.sleep, compare=False)

    def delay(self, exc: BaseException | None, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` failures, the last being ``exc``."""
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait)
        ceiling = min(self.max_wait, self.initial_wait * 2 ** (failed_attempts - 1))
        return random.uniform(0, ceiling)  # full jitter

    def wait_after_first(self, state: RetryCallState) -> float:
        """tenacity's wait for the attempts after the first (which ran outside tenacity)."""
        return self.delay(state.outcome.exception() if state.outcome else None, state.attempt_number + 1)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return (parsedate_to_datetime(value) - utcnow()).total_seconds()
    except (TypeError, ValueError):
        return None


class Connector:
    """Base class: an HTTP client for one external system plus its declared actions."""

    name: ClassVar[str] = "connector"
    _actions: ClassVar[dict[str, ActionSpec] | None] = None

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self._gate: Gate | None = None

    @classmethod
    def actions(cls) -> dict[str, ActionSpec]:
        """Every action the connector declares, by method name."""
        if cls.__dict__.get("_actions") is None:
            found = {}
            for klass in reversed(cls.__mro__):
                for attr, value in vars(klass).items():
                    decl = getattr(value, "__steward_action__", None)
                    if decl is not None:
                        found[attr] = ActionSpec(connector=cls.name, method=attr, **decl)
            cls._actions = found
        return cls._actions  # type: ignore[return-value]

    async def read(self, method: str, **arguments: Any) -> Any:
        """Call read action ``method`` directly, outside the gate: for the engine's own reads that
        describe a call to the policies (see :meth:`runtime.facts.Facts.read`), never for a step's."""
        spec = type(self).actions().get(method)
        if spec is None or spec.effect is not Effect.read:
            raise StewardError(f"{self.name}.{method} is not a read action of this connector")
        return await getattr(type(self), method).__wrapped__(self, **arguments)

    def bind(self, gate: Gate) -> Connector:
        """A view of this connector whose actions pass through ``gate`` (one per run)."""
        bound = copy.copy(self)
        bound._gate = gate
        return bound

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        """Send one request with retries; return the decoded JSON body (None when empty)."""
        call = _current_call.get()
        headers = {}
        if call is not None and call.idempotency_key and method.upper() != "GET":
            headers["Idempotency-Key"] = call.idempotency_key
        inject(headers)  # traceparent: the service's own spans join the call's trace (W3C Trace Context)


        async def attempt() -> Any:
            if call is not None:
                call.attempts += 1
            return await self._send_once(method, path, json=json, params=params, headers=headers, call=call)

        # The first attempt runs bare: most calls succeed, and setting up tenacity costs as much
        # as a small request. Failures go on under tenacity with the same backoff schedule.
        try:
            return await attempt()
        except StewardError as exc:
            if not is_retryable(exc) or self.retry.attempts == 1:
                raise
            await self.retry.sleep(self.retry.delay(exc, 1))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.attempts - 1),
            wait=self.retry.wait_after_first,
            retry=retry_if_exception(is_retryable),
            sleep=self.retry.sleep,
            reraise=True,
        )
        return await retrying(attempt)

    async def _send_once(
        self, method: str, path: str, *, json: Any, params: Any, headers: dict[str, str], call: CallState | None
    ) -> Any:
        where = f"{self.name} {method} {path}"
        try:
            response = await self._client.request(method, path, json=json, params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise ConnectorTransient(f"{where} timed out: {exc.__class__.__name__}") from exc
        except httpx.TransportError as exc:
            raise ConnectorTransient(f"{where} could not reach {self.base_url}: {exc}") from exc
        if call is not None:
            call.last_status = response.status_code
        if response.status_code == 429 or response.status_code >= 500:
            raise ConnectorTransient(
                f"{where} answered {response.status_code}",
                status=response.status_code,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if response.status_code >= 400:
            raise ConnectorRejected(
                f"{where} answered {response.status_code}: {response.text[:300]}", status=response.status_code
            )
        if not response.content:
            return None
        return response.json()


def start_call(idempotency_key: str | None) -> tuple[CallState, contextvars.Token]:
    state = CallState(idempotency_key=idempotency_key)
    return state, _current_call.set(state)


def end_call(token: contextvars.Token) -> None:
    _current_call.reset(token)
