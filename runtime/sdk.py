"""The workflow SDK: a governed definition around a LangGraph ``StateGraph``.

A workflow names itself, its semantic version and its owner, declares the
input model that guards the door and the scopes it may use, and supplies a
function that builds an ordinary ``StateGraph``. Nodes reach the outside world
only through ``runtime.context`` (a :class:`runtime.context.StepContext`).

>>> from langgraph.graph import StateGraph, START, END
>>> from langgraph.runtime import Runtime
>>> class Input(BaseModel):
...     email: str
>>> class State(TypedDict, total=False):
...     email: str
...     found: int
>>> async def greet(state: State, runtime: Runtime[StepContext]) -> State:
...     found = await runtime.context.crm.search_contacts(email=state["email"])
...     return {"found": len(found)}
>>> def build() -> StateGraph:
...     graph = StateGraph(State, context_schema=StepContext)
...     graph.add_node("greet", greet)
...     graph.add_edge(START, "greet")
...     graph.add_edge("greet", END)
...     return graph
>>> hello = Workflow(name="hello", version="1.0.0", owner=Owner(name="Ada Ops", email="ada@example.com"),
...                  description="Says hello", input_model=Input, build=build, grants={"crm.contacts.read"})
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import marshal
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any

import orjson
from langgraph.graph import StateGraph
from pydantic import BaseModel, EmailStr, TypeAdapter, ValidationError

from runtime.errors import InputInvalid, WorkflowDefinitionError, WorkflowNotFound
from runtime.guards import DEFAULT_GUARDS, ConnectorErrors, FailureRate, Guard, RejectionRate
from runtime.quality import RecordChecks, checks_by_kind

NAME = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
SCOPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_email = TypeAdapter(EmailStr)


@dataclass(frozen=True)
class Owner:
    """The named person answerable for a workflow, and optionally their backup's email: an approval
    that passes its deadline is escalated to both.

    >>> Owner(name="Pricing Operations Lead", email="pricing-ops@example.com", backup="pricing-deputy@example.com")
    """

    name: str
    email: str
    backup: str = ""


@dataclass(frozen=True)
class Workflow:
    """A governed workflow definition, checked when it is constructed."""

    name: str
    version: str
    owner: Owner
    description: str
    input_model: type[BaseModel]
    build: Callable[[], StateGraph]
    grants: frozenset[str] = field(default_factory=frozenset)
    checks: Mapping[str, RecordChecks] = field(default_factory=dict, hash=False)
    """Data-quality checks by record kind (give a list of :class:`RecordChecks`), see ``runtime.quality``."""
    approval_sla: timedelta | None = None
    """How long a person has to decide this workflow's approvals (a policy's ``@sla`` may shorten it);
    None: a day. Past it the request is escalated to the owner and their backup; past it twice over,
    it expires and is rejected (the safe default)."""
    models: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Default chat models by name (a ``BaseChatModel`` or a function returning one); a process may
    configure another under the same name (``STEWARD_MODELS``), see :meth:`StepContext.model`."""
    rollout_guards: Sequence[Guard] = DEFAULT_GUARDS
    """What rolls a canary of this workflow back by itself (see ``runtime.guards``); empty: nothing."""
    routing_key: str | None = None
    """A top-level field of the input that new runs are routed by during a rollout (a customer id:
    the customer keeps their version); None: the client's Idempotency-Key (see ``runtime.rollout``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", checks_by_kind(
            self.checks.values() if isinstance(self.checks, Mapping) else self.checks))
        problems = []
        if not isinstance(self.name, str) or not NAME.match(self.name):
            problems.append(f"name {self.name!r} must be lower_snake_case, 2-64 characters")
        if not isinstance(self.version, str) or not SEMVER.match(self.version):
            problems.append(f"version {self.version!r} is not a semantic version like 1.2.0")
        if not isinstance(self.owner, Owner) or not self.owner.name.strip():
            problems.append("owner must be Owner(name=..., email=...) naming a person")
        else:
            try:
                _email.validate_python(self.owner.email)
            except ValidationError:
                problems.append(f"owner email {self.owner.email!r} is not an email address")
            if self.owner.backup:
                try:
                    _email.validate_python(self.owner.backup)
                except ValidationError:
                    problems.append(f"owner backup {self.owner.backup!r} is not an email address")
        if self.approval_sla is not None and not (
                isinstance(self.approval_sla, timedelta) and timedelta(minutes=1) <= self.approval_sla <= timedelta(days=365)):
            problems.append(f"approval_sla {self.approval_sla!r} must be a timedelta from a minute to a year")
        if not isinstance(self.description, str) or not self.description.strip():
            problems.append("description must say what the workflow does")
        if not (isinstance(self.input_model, type) and issubclass(self.input_model, BaseModel)):
            problems.append("input_model must be a pydantic BaseModel subclass")
        if not callable(self.build):
            problems.append("build must be a function returning a langgraph StateGraph")
        grants = frozenset(self.grants)
        problems += [f"grant {g!r} is not a scope like crm.deals.write" for g in sorted(grants) if not SCOPE.match(g)]
        if not isinstance(self.models, Mapping):
            problems.append("models must be a mapping of name to a chat model or a function returning one")
        else:
            problems += [f"model {name!r}: give a lower_snake_case name and a chat model or a function returning one"
                         for name, model in self.models.items()
                         if not (isinstance(name, str) and NAME.match(name) and callable_or_model(model))]
        problems += [f"rollout guard {g!r} is not a FailureRate, RejectionRate or ConnectorErrors"
                     for g in self.rollout_guards if not isinstance(g, (FailureRate, RejectionRate, ConnectorErrors))]
        if self.routing_key is not None and not (isinstance(self.routing_key, str) and self.routing_key in getattr(
                self.input_model, "model_fields", {})):
            problems.append(f"routing_key {self.routing_key!r} must name a field of the input model")
        if problems:
            raise WorkflowDefinitionError(f"workflow {self.name!r} is invalid: " + "; ".join(problems))
        object.__setattr__(self, "grants", grants)

    @cached_property
    def code_hash(self) -> str:
        """SHA-256 of the source of the module that defines ``build`` and of every module that defines one
        of its nodes (see :func:`code_hash`)."""
        return code_hash(self.build, nodes=[getattr(spec.runnable, "afunc", None) or getattr(spec.runnable, "func", None)
                                            for spec in self.graph.nodes.values()])

    @cached_property
    def graph(self) -> StateGraph:
        graph = self.build()
        if not isinstance(graph, StateGraph):
            raise WorkflowDefinitionError(
                f"workflow {self.name!r}: build() returned {type(graph).__name__}, not a langgraph StateGraph"
            )
        try:
            graph.compile()  # what LangGraph checks (an entry point, edges to known nodes) fails here, not in a run
        except Exception as exc:
            raise WorkflowDefinitionError(f"workflow {self.name!r} {self.version}: its graph does not compile: "
                                          f"{type(exc).__name__}: {exc}") from exc
        return graph

    def validate_input(self, data: Any) -> dict[str, Any]:
        """The input as JSON-safe data, or :class:`InputInvalid` listing every bad field."""
        try:
            model = self.input_model.model_validate(data)
        except ValidationError as exc:
            fields = [
                {"loc": ["input", *err["loc"]], "msg": err["msg"], "type": err["type"]}
                for err in exc.errors(include_url=False)
            ]
            names = ", ".join(".".join(str(p) for p in f["loc"][1:]) or "input" for f in fields)
            raise InputInvalid(f"input for workflow {self.name!r} is invalid: {names}", details=fields) from None
        data = model.model_dump(mode="json")
        try:
            orjson.dumps(data)
        except TypeError as exc:  # an integer beyond 64 bits: no JSON column or digest keeps it exactly
            raise InputInvalid(f"input for workflow {self.name!r} is invalid: {exc}; send such numbers as strings",
                               details=[{"loc": ["input"], "msg": str(exc), "type": "json_unencodable"}]) from None
        return data


def callable_or_model(model: Any) -> bool:
    from langchain_core.language_models import BaseChatModel

    return isinstance(model, BaseChatModel) or callable(model)


def resolve_model(name: str, model: Any) -> Any:
    """A configured model as a ``BaseChatModel``: an instance as is, a function (or class) called once."""
    from langchain_core.language_models import BaseChatModel

    named = model
    if isinstance(model, str):
        model = load_object(model)
    if not isinstance(model, BaseChatModel) and callable(model):
        try:
            model = model()
        except Exception as exc:
            raise WorkflowDefinitionError(f"model {name!r} ({named!r}) could not be made: "
                                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, BaseChatModel):
        raise WorkflowDefinitionError(f"model {name!r} is a {type(model).__name__}, not a langchain-core "
                                      "BaseChatModel (or a function returning one)")
    return model


def semver_key(version: str) -> tuple:
    """A sort key giving semantic-version precedence (semver.org §11): major, minor and patch compare as
    numbers; a pre-release sorts below its release; pre-release identifiers compare as numbers when numeric
    (below any alphanumeric one), else as text, a longer list above its prefix. Build metadata does not count
    (it only breaks ties, so that the order is total).

    >>> sorted(["1.10.0", "1.9.0", "1.10.0-rc.1"], key=semver_key)
    ['1.9.0', '1.10.0-rc.1', '1.10.0']
    """
    core, _, build = version.partition("+")
    core, dash, pre = core.partition("-")
    major, minor, patch = (int(part) for part in core.split("."))
    identifiers = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if dash else ()
    return major, minor, patch, 0 if dash else 1, identifiers, build


def code_hash(build: Callable[..., Any], *, nodes: Iterable[Any] = ()) -> str:
    """SHA-256 (hex) of the source of the module that defines ``build``: any edit of that module changes it.
    A version whose nodes are defined in other modules too (steps shared between versions) is hashed over
    all of them, so an edit of a shared step changes every version that uses it; LangGraph's and
    LangChain's own modules are left out.

    A function whose module has no readable source (defined in a REPL) is hashed by its compiled code.

    >>> code_hash(price_change.build) == hashlib.sha256(Path(price_change.__file__).read_bytes()).hexdigest()
    True
    """
    own = _module_hash(build)
    home = inspect.getmodule(build)
    others: dict[str, Any] = {}  # module name: one of its node functions
    for fn in nodes:
        module = inspect.getmodule(fn) if callable(fn) else None
        if module is not None and module is not home and not module.__name__.startswith(("langgraph", "langchain")):
            others.setdefault(module.__name__, fn)
    if not others:
        return own  # one module: the SHA-256 of its source, as it always was
    parts = sorted([(home.__name__ if home is not None else "", own),
                    *((name, _module_hash(fn)) for name, fn in others.items())])
    return hashlib.sha256("".join(f"{name}\n{digest}\n" for name, digest in parts).encode()).hexdigest()


def _module_hash(build: Any) -> str:
    module = inspect.getmodule(build)
    try:
        source = inspect.getsource(module).encode() if module is not None else None
    except (OSError, TypeError):
        source = None
    if source is None:
        code = getattr(build, "__code__", None)
        if code is None:
            raise WorkflowDefinitionError(f"cannot read the source of {build!r} to compute its code hash; "
                                          "define build as a function in a module")
        source = marshal.dumps(code)
    return hashlib.sha256(source).hexdigest()


class Registry:
    """The workflow versions one Steward instance serves, keyed by ``(name, version)``.

    Several versions of a workflow load side by side: new runs take the highest semantic version unless
    they name one, and a run always resumes on the version it started on.

    >>> registry = Registry([price_change_1_0_0, price_change_1_1_0])
    >>> registry.get("price_change").version, registry.get("price_change", "1.0.0").version
    ('1.1.0', '1.0.0')
    """

    def __init__(self, workflows: Iterable[Workflow]) -> None:
        by_key: dict[tuple[str, str], Workflow] = {}
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise WorkflowDefinitionError(f"{wf!r} is not a runtime.Workflow")
            if (wf.name, wf.version) in by_key:
                raise WorkflowDefinitionError(f"workflow {wf.name!r} version {wf.version} is registered twice")
            by_key[(wf.name, wf.version)] = wf
        ordered = sorted(by_key.values(), key=lambda wf: (wf.name, semver_key(wf.version)))
        self._by_key = {(wf.name, wf.version): wf for wf in ordered}
        self._latest = {wf.name: wf for wf in ordered}  # ascending order: the highest version is written last
        for wf in ordered:
            _ = wf.graph  # build now: a broken graph fails start-up, not the first run

    def get(self, name: str, version: str | None = None) -> Workflow:
        """The workflow ``name`` at ``version``, or at its highest loaded version when ``version`` is None."""
        if name not in self._latest:
            known = ", ".join(self._latest) or "none"
            raise WorkflowNotFound(f"no workflow named {name!r}; known: {known}")
        if version is None:
            return self._latest[name]
        try:
            return self._by_key[(name, version)]
        except KeyError:
            loaded = ", ".join(self.versions(name))
            raise WorkflowNotFound(f"workflow {name!r} has no version {version!r}; loaded: {loaded}") from None

    def versions(self, name: str) -> list[str]:
        """The loaded versions of ``name``, lowest first."""
        return [version for (wf_name, version) in self._by_key if wf_name == name]

    def keys(self) -> list[tuple[str, str]]:
        """Every loaded ``(name, version)``."""
        return list(self._by_key)

    def __iter__(self) -> Iterator[Workflow]:
        """Every loaded version, by name, then lowest version first."""
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)


def load_object(spec: str) -> Any:
    """Import ``module:attr`` (the form settings use to name workflows and routers)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise WorkflowDefinitionError(f"{spec!r} is not of the form module:attr")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise WorkflowDefinitionError(f"cannot load {spec!r}: {exc}") from exc
    return obj


def load_registry(specs: Iterable[str]) -> Registry:
    found: list[Workflow] = []
    for spec in specs:
        obj = load_object(spec)
        found.extend(obj if isinstance(obj, (list, tuple)) else [obj])
    return Registry(found)
