"""Policies: Cedar documents that authorize every gated action, loaded once per content hash.

A policy folder holds ``*.cedar`` files (the rules) and ``*.cedarschema`` files (the
names: principals, one action per connector action, resources and each action's
context). Every statement carries two annotations, ``@id("...")`` (unique, stable: what
audit events and errors name) and ``@reason("...")`` (what a person reads). A ``forbid``
annotated ``@escalate("role")`` (and optionally ``@approvals("2")``) does not deny: it
asks that many distinct people of that role to approve the call instead. Two more
annotations shape that request: ``@sla("4h")`` (when it is due: minutes ``m``, hours ``h``
or days ``d``; the shortest of the matching escalations wins; default the workflow's, else a
day) and ``@separate("owner")`` (the workflow's owner may not approve it either).

An action is allowed when a ``permit`` matches and no ``forbid`` does; denied when a
plain ``forbid`` matches or no ``permit`` does (default deny); escalated when it would be
allowed but for ``@escalate`` forbids.

>>> policies = load_policies([Path("policies")])      # PolicyLoadError names file and line
>>> decision = policies.evaluate(PolicyRequest(workflow="price_change", version="1.1.0",
...     action="pricing.set_price", resource=("Sku", "SKU-1001"), context={...}))
>>> decision.outcome, decision.policies
('escalate', ('pricing.change_over_10_pct',))
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import cedarpy
import orjson

from runtime import audit
from runtime.errors import PolicyContextInvalid, PolicyLoadError

POLICY_SUFFIX = ".cedar"
SCHEMA_SUFFIX = ".cedarschema"
DEFAULT_FOLDER = Path(__file__).resolve().parent.parent / "policies"
ANNOTATIONS = frozenset({"id", "reason", "escalate", "approvals", "sla", "separate"})
DURATION = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
MAX_SLA_SECONDS = 365 * 86400
SEPARABLE = frozenset({"owner"})  # who @separate may keep from approving
POLICY_ID = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
ROLE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
MAX_APPROVALS = 5
DECISIONS_KEPT = 4096  # per policy set; decisions are small and immutable
DECIMAL_LIMIT = Decimal("922337203685477.5807")  # Cedar's decimal: 4 places, signed 64-bit underneath
_STEP = Decimal("0.0001")

Outcome = Literal["allow", "deny", "escalate"]


# -- reading documents ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy folder, where it is."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def statements(text: str) -> list[tuple[int, str]]:
    """Split Cedar text into its top-level statements (ending in ``;`` outside strings, comments and
    braces), each with the line its first token is on. A trailing fragment without ``;`` is returned too."""
    out: list[tuple[int, str]] = []
    start, line, first_line, depth, i, n = 0, 1, None, 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
        elif ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch == '"':
            first_line = first_line or line
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
        elif not ch.isspace():
            first_line = first_line or line
            if ch in "{[(":
                depth += 1
            elif ch in "}])":
                depth -= 1
            elif ch == ";" and depth <= 0:
                out.append((first_line, text[start:i + 1]))
                start, first_line, depth = i + 1, None, 0
        i += 1
    if first_line is not None:
        out.append((first_line, text[start:]))
    return out


@dataclass(frozen=True)
class Documents:
    """The policy files of one or more folders, by name (``folder/file``), and their content hash."""

    policies: dict[str, str]
    schemas: dict[str, str]

    @classmethod
    def read(cls, folders: Sequence[Path]) -> Documents:
        policies, schemas = {}, {}
        if not folders:
            raise PolicyLoadError("no policy folder is configured: set STEWARD_POLICIES")
        for folder in folders:
            if not folder.is_dir():
                raise PolicyLoadError(f"policy folder {str(folder)!r} does not exist",
                                      details=[{"file": str(folder), "line": 0, "message": "no such folder"}])
            for path in sorted(folder.iterdir()):
                if path.suffix not in (POLICY_SUFFIX, SCHEMA_SUFFIX) or not path.is_file():
                    continue
                name = f"{folder.name}/{path.name}"
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise PolicyLoadError(f"{name}: cannot be read: {exc}",
                                          details=[{"file": name, "line": 0, "message": str(exc)}]) from None
                (policies if path.suffix == POLICY_SUFFIX else schemas)[name] = text
        if not schemas:
            raise PolicyLoadError(f"no {SCHEMA_SUFFIX} file in {', '.join(map(str, folders))}: policies are "
                                  "validated against a schema (see policies/steward.cedarschema)")
        return cls(policies=policies, schemas=schemas)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Documents:
        return cls(policies=dict(value["policies"]), schemas=dict(value["schemas"]))

    def to_json(self) -> dict[str, Any]:
        return {"policies": self.policies, "schemas": self.schemas}

    @functools.cached_property
    def hash(self) -> str:
        return audit.digest(self.to_json())


# -- the compiled set ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One policy: its id, effect, annotations and where it was written."""

    id: str
    effect: Literal["permit", "forbid"]
    reason: str
    file: str
    line: int
    escalate: str | None = None
    approvals: int = 1
    sla_seconds: int | None = None
    separate: frozenset[str] = frozenset()

    @property
    def escalates(self) -> bool:
        return self.escalate is not None


@dataclass(frozen=True)
class PolicyRequest:
    """What is asked: may this workflow version do ``action`` on ``resource``, given ``context``?"""

    workflow: str
    version: str
    action: str
    resource: tuple[str, str]
    context: dict[str, Any] = field(default_factory=dict)

    def context_json(self) -> str:
        """The context as canonical JSON text: digested for the audit and handed to Cedar as it is (one
        serialisation per decision); :class:`PolicyContextInvalid` when it is not JSON."""
        try:
            return orjson.dumps(self.context, option=orjson.OPT_SORT_KEYS).decode()
        except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits, which Cedar has no type for
            raise PolicyContextInvalid(f"the policy context for {self.action} cannot be encoded: {exc}",
                                       details={"action": self.action, "errors": [str(exc)]}) from None

    def cedar(self, context_json: str) -> dict[str, Any]:
        """The request as cedarpy takes it, with the context as :meth:`context_json` made it."""
        return {
            "principal": {"type": "WorkflowVersion", "id": f"{self.workflow}@{self.version}"},
            "action": {"type": "Action", "id": self.action},
            "resource": {"type": self.resource[0], "id": str(self.resource[1])},
            "context": context_json,
        }


@dataclass(frozen=True)
class PolicyDecision:
    """The outcome, the policies that determined it and their reasons; for an escalation, who must approve."""

    outcome: Outcome
    action: str
    policies: tuple[str, ...]
    reasons: tuple[str, ...]
    policy_hash: str
    context_digest: str
    roles: tuple[str, ...] = ()
    approvals: int = 0
    sla_seconds: int | None = None
    """When an escalation is due (the shortest ``@sla`` of its policies); None: the workflow's default."""
    separate: tuple[str, ...] = ()
    """Who else may not approve (``@separate("owner")``: the workflow's owner)."""

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def explain(self) -> dict[str, Any]:
        """JSON for audit events, approval requests and ``POST /policy/evaluate``."""
        out: dict[str, Any] = {"outcome": self.outcome, "action": self.action, "policies": list(self.policies),
                               "reasons": list(self.reasons), "policy_hash": self.policy_hash,
                               "context_digest": self.context_digest}
        if self.outcome == "escalate":
            out |= {"roles": list(self.roles), "approvals": self.approvals}
            if self.sla_seconds is not None:
                out["sla_seconds"] = self.sla_seconds
            if self.separate:
                out["separate"] = list(self.separate)
        return out


class Policies:
    """A compiled, validated policy set; immutable, shared by every run pinned to its hash."""

    def __init__(self, documents: Documents) -> None:
        self.documents = documents
        self.hash = documents.hash
        problems: list[Problem] = []
        self.schema = _schema(documents.schemas, problems)
        self.statements: dict[str, Statement] = {}
        policy_json: dict[str, Any] = {}
        for name, text in documents.policies.items():
            for line, chunk in statements(text):
                parsed = _statement(name, line, chunk, self.schema, problems)
                if parsed is None:
                    continue
                statement, as_json = parsed
                if statement.id in self.statements:
                    first = self.statements[statement.id]
                    problems.append(Problem(name, line, f"@id({statement.id!r}) is already used at "
                                                        f"{first.file}:{first.line}; ids must be unique"))
                    continue
                self.statements[statement.id] = statement
                policy_json[statement.id] = as_json
        if self.schema is not None:
            try:  # the principal every request names: refused here, it would be refused by every request
                cedarpy.Entities.from_json_str(_principal_json("workflow", "1.0.0"), self.schema)
            except ValueError as exc:
                message = ("schema: Steward's principal is `WorkflowVersion` (\"name@version\", no required "
                           "attributes) in `Workflow`; declare `entity Workflow;` and `entity WorkflowVersion in "
                           f"[Workflow];` ({exc})")
                problems.append(Problem(*_where(documents.schemas, "`WorkflowVersion`"), message))
        if problems:
            raise PolicyLoadError(
                f"{problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                details=[{"file": p.file, "line": p.line, "message": p.message} for p in problems])
        self._decided: dict[tuple[Any, ...], PolicyDecision] = {}
        # One evaluation answers all three outcomes: an escalation forbid is compiled as a permit (a
        # marker), so an Allow lists every satisfied permit, markers included. Allowed with a marker
        # and a real permit: escalate; with markers alone: nothing permits it (default deny).
        for pid, statement in self.statements.items():
            if statement.escalates:
                policy_json[pid] = {**policy_json[pid], "effect": "permit"}
        self._policy_json = policy_json
        self._sets: dict[str, cedarpy.PolicySet] = {}  # by action: see _set_for
        self._principals: dict[tuple[str, str], cedarpy.Entities] = {}

    def _set_for(self, action: str) -> cedarpy.PolicySet:
        """The statements that can apply to ``action``, as their own set (made on first use): a
        statement whose scope names another action (``action == Action::"..."``) can never be
        satisfied by a request for this one, so leaving it out changes no decision and no reason,
        and Cedar no longer looks at every statement of every action on each call."""
        found = self._sets.get(action)
        if found is None:
            found = self._sets[action] = _policy_set({
                pid: est for pid, est in self._policy_json.items() if _may_apply(est, action)})
        return found

    def __repr__(self) -> str:
        return f"<Policies {self.hash[:12]} {len(self.statements)} statements>"

    def evaluate(self, request: PolicyRequest) -> PolicyDecision:
        """Allow, deny or escalate ``request``; :class:`PolicyContextInvalid` when its context does not
        fit the action's declared context (a context builder's bug, not the workflow's).

        A decision is a function of the set and the request alone, so the last few thousand are kept:
        the same request (every read with its empty context, a step that runs again) is not asked twice."""
        context_json = request.context_json()
        context_digest = audit.sha256(context_json)
        key = (request.workflow, request.version, request.action, request.resource, context_digest)
        found = self._decided.get(key)
        if found is not None:
            return found
        decision = self._evaluate(request, context_json, context_digest)
        if len(self._decided) >= DECISIONS_KEPT:
            self._decided.clear()
        self._decided[key] = decision
        return decision

    def _evaluate(self, request: PolicyRequest, context_json: str, context_digest: str) -> PolicyDecision:
        # With the schema: Cedar validates the request (the principal and resource types the action
        # applies to, the context's declared attributes and types) and reads the context through it.
        result = cedarpy.is_authorized(request.cedar(context_json), self._set_for(request.action),
                                       self._principal(request.workflow, request.version), self.schema)
        decide = functools.partial(self._decision, request.action, context_digest)
        if result.decision is cedarpy.Decision.NoDecision:
            errors = result.diagnostics.errors
            if any("does not exist in the supplied schema" in e for e in errors) and \
                    any(f'Action::"{request.action}"' in e for e in errors):
                return decide("deny", (), (f"{request.action} is not declared in the policy schema, so no policy "
                                           "can permit it; declare it in a .cedarschema file and permit it",))
            raise PolicyContextInvalid(
                f"the policy request for {request.action} does not fit the schema: {'; '.join(errors)}",
                details={"action": request.action, "errors": errors})
        ids = tuple(sorted(result.diagnostics.reasons))
        if result.decision is cedarpy.Decision.Deny:
            return decide("deny", ids) if ids else decide("deny", (), _default_deny(request))
        escalations = [self.statements[pid] for pid in ids if self.statements[pid].escalates]
        if len(escalations) == len(ids):  # only markers matched: no policy permits the action
            return decide("deny", (), _default_deny(request))
        if not escalations:
            return decide("allow", ids)
        slas = [s.sla_seconds for s in escalations if s.sla_seconds is not None]
        return decide("escalate", tuple(s.id for s in escalations),
                      roles=tuple(sorted({s.escalate for s in escalations if s.escalate})),
                      approvals=max(s.approvals for s in escalations), sla_seconds=min(slas) if slas else None,
                      separate=tuple(sorted(set().union(*(s.separate for s in escalations)))))

    def _principal(self, workflow: str, version: str) -> cedarpy.Entities:
        """The principal's entity (a workflow version, member of its workflow), with the schema's action
        entities: an ``action in Action::"group"`` scope needs the hierarchy the schema declares, and
        entities made without the schema have none (such a forbid would never match)."""
        key = (workflow, version)
        found = self._principals.get(key)
        if found is None:
            if len(self._principals) >= DECISIONS_KEPT:
                self._principals.clear()
            found = self._principals[key] = _principal(workflow, version, self.schema)
        return found

    def _decision(self, action: str, context_digest: str, outcome: Outcome, ids: tuple[str, ...],
                  reasons: Iterable[str] | None = None, **extra: Any) -> PolicyDecision:
        if reasons is None:
            reasons = [self.statements[pid].reason for pid in ids]
        return PolicyDecision(outcome=outcome, action=action, policies=ids, reasons=tuple(reasons),
                              policy_hash=self.hash, context_digest=context_digest, **extra)


def _policy_set(policy_json: dict[str, Any]) -> cedarpy.PolicySet:
    return cedarpy.PolicySet.from_json_str(
        json.dumps({"staticPolicies": policy_json, "templates": {}, "templateLinks": []}))


def _may_apply(est: dict[str, Any], action: str) -> bool:
    """Whether a statement's action scope (its JSON form) can match ``action``: anything but an ``==``
    on another action may (``in`` a group is decided by the schema's action hierarchy: kept)."""
    scope = est.get("action") or {}
    if scope.get("op") != "==":
        return True
    entity = scope.get("entity") or {}
    return entity.get("type") != "Action" or entity.get("id") == action


def _default_deny(request: PolicyRequest) -> tuple[str]:
    return (f"no policy permits {request.action} for {request.workflow} {request.version} (default deny)",)


def _principal_json(workflow: str, version: str) -> str:
    return json.dumps([
        {"uid": {"type": "WorkflowVersion", "id": f"{workflow}@{version}"}, "attrs": {},
         "parents": [{"type": "Workflow", "id": workflow}]},
        {"uid": {"type": "Workflow", "id": workflow}, "attrs": {}, "parents": []},
    ])


def _principal(workflow: str, version: str, schema: cedarpy.Schema | None) -> cedarpy.Entities:
    try:
        return cedarpy.Entities.from_json_str(_principal_json(workflow, version), schema)
    except ValueError as exc:  # the schema is checked for this at load (see Policies): a bug if it happens
        raise PolicyContextInvalid(f"the principal {workflow}@{version} does not fit the policy schema: {exc}") from None


def _schema(schemas: dict[str, str], problems: list[Problem]) -> cedarpy.Schema | None:
    """All schema files as one schema; a problem names the declaration it is in."""
    for name, text in schemas.items():
        for line, chunk in statements(text):
            try:
                cedarpy.Schema.from_str(chunk)
            except ValueError as exc:
                if "failed to resolve" not in str(exc):  # a syntax error, not a name declared elsewhere
                    problems.append(Problem(name, line, f"schema: {exc}"))
    if problems:
        return None
    try:
        return cedarpy.Schema.from_str("\n".join(schemas.values()))
    except ValueError as exc:
        name, line = _where(schemas, str(exc))
        problems.append(Problem(name, line, f"schema: {exc}"))
        return None


def _where(files: dict[str, str], message: str) -> tuple[str, int]:
    """The first declaration that mentions the name an error message quotes (or the first file)."""
    quoted = re.findall(r"`([^`]+)`|: (\S+)$", message)
    words = [w for pair in quoted for w in pair if w]
    for name, text in files.items():
        for line, chunk in statements(text):
            if any(re.search(rf"\b{re.escape(word.split('::')[-1].strip(chr(34)))}\b", chunk) for word in words):
                return name, line
    return next(iter(files)), 1


def _statement(file: str, line: int, text: str, schema: cedarpy.Schema | None,
               problems: list[Problem]) -> tuple[Statement, dict[str, Any]] | None:
    """Parse and check one statement; on a problem, note it (file and line) and return None."""
    def problem(message: str) -> None:
        problems.append(Problem(file, line, message))

    if not text.rstrip().endswith(";"):
        problem("statement does not end with ';'")
        return None
    try:
        as_json = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError as exc:
        problem(f"cannot parse: {exc}")
        return None
    found = list(as_json.get("staticPolicies", {}).values())
    if as_json.get("templates") or len(found) != 1:
        problem("templates (?principal, ?resource) are not used here; write one static policy per statement")
        return None
    policy = found[0]
    notes: dict[str, str] = policy.get("annotations") or {}
    unknown = sorted(set(notes) - ANNOTATIONS)
    if unknown:
        problem(f"unknown annotation @{unknown[0]}; known: @id, @reason, @escalate, @approvals, @sla, @separate")
        return None
    pid, reason = notes.get("id") or "", (notes.get("reason") or "").strip()
    if not POLICY_ID.match(pid):
        problem(f"every policy needs @id(\"...\") in lower case dotted form, e.g. @id(\"pricing.change_over_10_pct\")"
                f"{f'; got {pid!r}' if pid else ''}")
        return None
    if not reason:
        problem(f"policy {pid} needs @reason(\"...\"): the sentence a person reads when it decides")
        return None
    escalate, approvals = notes.get("escalate"), notes.get("approvals")
    count = 1
    if escalate is not None:
        if policy["effect"] != "forbid":
            problem(f"policy {pid}: @escalate belongs on a forbid (it turns that denial into an approval)")
            return None
        if not ROLE.match(escalate):
            problem(f"policy {pid}: @escalate({escalate!r}) must name a role such as \"pricing_manager\"")
            return None
    if approvals is not None:
        if escalate is None:
            problem(f"policy {pid}: @approvals needs @escalate naming who approves")
            return None
        if not approvals.isdigit() or not 1 <= int(approvals) <= MAX_APPROVALS:
            problem(f"policy {pid}: @approvals({approvals!r}) must be a whole number from 1 to {MAX_APPROVALS}")
            return None
        count = int(approvals)
    sla, separate = notes.get("sla"), notes.get("separate")
    sla_seconds = None
    for name, value in (("sla", sla), ("separate", separate)):
        if value is not None and escalate is None:
            problem(f"policy {pid}: @{name} needs @escalate (it shapes the approval an escalation asks for)")
            return None
    if sla is not None:
        matched = DURATION.match(sla)
        if not matched or int(matched.group(1)) * _UNIT_SECONDS[matched.group(2)] > MAX_SLA_SECONDS:
            problem(f"policy {pid}: @sla({sla!r}) must be a duration such as \"30m\", \"4h\" or \"2d\" "
                    "(at most a year)")
            return None
        sla_seconds = int(matched.group(1)) * _UNIT_SECONDS[matched.group(2)]
    if separate is not None and separate not in SEPARABLE:
        problem(f"policy {pid}: @separate({separate!r}) must name whom to keep from approving: "
                f"{', '.join(sorted(SEPARABLE))}")
        return None
    if schema is not None:
        checked = cedarpy.validate_policies(text, schema)
        if not checked.validation_passed:
            problem(f"policy {pid}: {'; '.join(e.error.replace('policy0', pid) for e in checked.errors)}")
            return None
    return Statement(id=pid, effect=policy["effect"], reason=reason, file=file, line=line, escalate=escalate,
                     approvals=count, sla_seconds=sla_seconds,
                     separate=frozenset({separate}) if separate else frozenset()), policy


# -- loading, cached by content hash ---------------------------------------------------------------

_COMPILED: dict[str, Policies] = {}


def compile_documents(documents: Documents) -> Policies:
    """The compiled set for ``documents``; parsed once per content hash for the process's life."""
    found = _COMPILED.get(documents.hash)
    if found is None:
        found = _COMPILED[documents.hash] = Policies(documents)
    return found


def load_policies(folders: Sequence[Path]) -> Policies:
    """Read, validate and compile the policy folders (:class:`PolicyLoadError` naming file and line)."""
    return compile_documents(Documents.read(folders))


# -- context values ----------------------------------------------------------------------------------


def cedar_decimal(value: Decimal | str | int, *, rounding: str = ROUND_UP) -> str:
    """A value for a context attribute the schema declares ``decimal``: four places, rounded away from
    zero by default, so a value just above a threshold never rounds down onto it (10.00001 % is above
    10 %). It is the decimal's text (``"10.0001"``), which Cedar reads through the schema as the decimal
    it declares (a quarter cheaper per value than the explicit ``{"__extn": ...}`` form); an attribute
    declared ``String`` would take it as a string, which policy validation catches at load wherever a
    policy compares it as a decimal.

    >>> cedar_decimal("10.00001")
    '10.0001'
    """
    try:
        number = Decimal(value).quantize(_STEP, rounding=rounding)
    except (InvalidOperation, ValueError, TypeError):
        raise PolicyContextInvalid(f"{value!r} is not a decimal number") from None
    if not number.is_finite() or abs(number) > DECIMAL_LIMIT:
        raise PolicyContextInvalid(f"{value!r} is outside the range of a policy decimal")
    return f"{number:f}"



class PolicyBook:
    """The policy sets runs are evaluated under: the one this process loaded (every new run is pinned
    to it) and, for runs pinned to an earlier one, that set read back by its hash and compiled once.

    >>> book = PolicyBook(load_policies(folders), load=read_documents_by_hash)
    >>> policies = await book.get(run.policy_hash)
    """

    def __init__(self, current: Policies, *,
                 load: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None) -> None:
        self.current = current
        self._load = load

    async def get(self, policy_hash: str | None) -> Policies:
        if policy_hash is None or policy_hash == self.current.hash:
            return self.current
        found = _COMPILED.get(policy_hash)
        if found is not None:
            return found
        documents = await self._load(policy_hash) if self._load is not None else None
        if documents is None:
            raise PolicyLoadError(f"policy set {policy_hash[:12]}… is not recorded in this database; "
                                  "re-pin the run to a policy set that is")
        return compile_documents(Documents.from_json(documents))
