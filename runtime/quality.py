"""Data-quality checks a workflow declares on the records it reads or receives.

The input model guards the shape of a run's input; these checks judge records a step
handles (a lead that arrived, contacts read from the CRM): required fields present,
formats, duplicates within a batch, any rule of the workflow's own. A step screens a
batch with ``runtime.context.screen(kind, records)``: records that pass come back, and
each record that fails is quarantined with its reasons instead of failing the whole
batch (see :mod:`runtime.quarantine`). A person releases or drops it later.

>>> contacts = RecordChecks("contact", required("email", "country"), matches("country", r"^[A-Z]{2}$"),
...                         unique("email"))
>>> Workflow(..., checks=[contacts])
>>> screening = await runtime.context.screen("contact", records)
>>> screening.passed          # the records to go on with, in their order
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import WorkflowDefinitionError

KIND = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
Reason = dict[str, str]  # {"check": ..., "field": ..., "message": ...}


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value in ([], {})


def _lookup(record: Mapping[str, Any], name: str) -> Any:
    """A field, or a dotted path into nested objects (HubSpot records keep theirs in ``properties``)."""
    value: Any = record
    for part in name.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True)
class Check:
    """One check over a batch: ``run(records)`` returns, for each record, the reasons it fails (an
    empty list when it passes). Most checks look at one record at a time (:func:`each`)."""

    name: str
    run: Callable[[Sequence[Mapping[str, Any]]], list[list[Reason]]]


def each(name: str, test: Callable[[Mapping[str, Any]], list[Reason]]) -> Check:
    """A check that judges every record on its own."""
    return Check(name, lambda records: [test(record) for record in records])


def required(*fields: str) -> Check:
    """Each of ``fields`` is present and not empty (dotted paths reach into nested objects).

    >>> required("email", "properties.country")
    """
    _names(fields, "required")

    def test(record: Mapping[str, Any]) -> list[Reason]:
        return [{"check": "required", "field": name, "message": f"{name} is missing"}
                for name in fields if _missing(_lookup(record, name))]

    return each("required", test)


def matches(name: str, pattern: str, *, what: str | None = None) -> Check:
    """When ``name`` is present, its text matches ``pattern`` in full (say ``what`` it should be).

    >>> matches("country", r"^[A-Z]{2}$", what="an ISO 3166 country code like DE")
    """
    _names([name], "matches")
    compiled = re.compile(pattern)
    expected = what or f"text matching {pattern}"

    def test(record: Mapping[str, Any]) -> list[Reason]:
        value = _lookup(record, name)
        if _missing(value) or compiled.fullmatch(str(value)):
            return []
        return [{"check": "format", "field": name, "message": f"{name} {str(value)[:80]!r} is not {expected}"}]

    return each(f"matches:{name}", test)


def one_of(name: str, values: Iterable[Any]) -> Check:
    """When ``name`` is present, it is one of ``values``."""
    _names([name], "one_of")
    values = list(values)
    allowed = frozenset(_typed(v) for v in values)
    shown = ", ".join(sorted(map(str, values)))

    def test(record: Mapping[str, Any]) -> list[Reason]:
        value = _lookup(record, name)
        if _missing(value) or _typed(value) in allowed:
            return []
        return [{"check": "one_of", "field": name, "message": f"{name} {str(value)[:80]!r} is not one of {shown}"}]

    return each(f"one_of:{name}", test)


def unique(*fields: str, ignore_case: bool = True) -> Check:
    """No earlier record of the batch has the same ``fields`` (the first one passes, later ones are
    duplicates). Records missing every one of ``fields`` are not compared.

    >>> unique("email")
    """
    _names(fields, "unique")

    def key(record: Mapping[str, Any]) -> tuple[Any, ...] | None:
        values = tuple(_lookup(record, name) for name in fields)
        if all(_missing(v) for v in values):
            return None
        return tuple(v.strip().lower() if ignore_case and isinstance(v, str) else _typed(v) for v in values)

    def run(records: Sequence[Mapping[str, Any]]) -> list[list[Reason]]:
        first: dict[tuple[Any, ...], int] = {}
        out: list[list[Reason]] = []
        for index, record in enumerate(records):
            mine = key(record)
            if mine is None or first.setdefault(_hashable(mine), index) == index:
                out.append([])
                continue
            shown = ", ".join(f"{n}={_lookup(record, n)!s:.80}" for n in fields)
            out.append([{"check": "duplicate", "field": ",".join(fields),
                         "message": f"duplicate of record {first[_hashable(mine)]} of the batch ({shown})"}])
        return out

    return Check(f"unique:{','.join(fields)}", run)


def _typed(value: Any) -> Any:
    """A hashable stand-in that tells 1, 1.0 and True apart (Python's equality does not)."""
    return (type(value).__name__, _hashable(value))


def _hashable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def rule(name: str, test: Callable[[Mapping[str, Any]], str | None], *, field: str = "") -> Check:
    """A rule of the workflow's own: ``test(record)`` returns why the record fails, or None.

    >>> rule("no_test_domain", lambda r: "a test address" if r["email"].endswith("@example.test") else None)
    """
    if not isinstance(name, str) or not KIND.match(name):
        raise WorkflowDefinitionError(f"check name {name!r} must be lower_snake_case")
    if not callable(test):
        raise WorkflowDefinitionError(f"check {name!r}: test must be a function of the record")

    def run(record: Mapping[str, Any]) -> list[Reason]:
        try:
            message = test(record)
        except Exception as exc:  # noqa: BLE001 - a rule that cannot judge a record fails that record only
            message = f"the check could not judge the record: {type(exc).__name__}: {exc}"
        if message is None or message is False or message == "":  # falsy answers mean "nothing wrong"
            return []
        return [{"check": name, "field": field, "message": str(message)[:500]}]

    return each(name, run)


def _names(fields: Iterable[str], check: str) -> None:
    fields = list(fields)
    if not fields or not all(isinstance(f, str) and f for f in fields):
        raise WorkflowDefinitionError(f"{check}(...) needs one or more field names")


@dataclass(frozen=True)
class RecordChecks:
    """The checks on one kind of record. ``resubmit`` (optional) turns a released record into the input
    of a new run of the workflow: for records the workflow receives as its input, ``resubmit=dict``.

    >>> RecordChecks("lead", required("company"), unique("email"), resubmit=dict)
    """

    kind: str
    checks: tuple[Check, ...] = ()
    resubmit: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def __init__(self, kind: str, *checks: Check,
                 resubmit: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        if not isinstance(kind, str) or not KIND.match(kind):
            raise WorkflowDefinitionError(f"record kind {kind!r} must be lower_snake_case, 1-64 characters")
        if not checks or not all(isinstance(c, Check) for c in checks):
            raise WorkflowDefinitionError(f"record kind {kind!r}: give one or more checks "
                                          "(required, matches, one_of, unique, rule)")
        if resubmit is not None and not callable(resubmit):
            raise WorkflowDefinitionError(f"record kind {kind!r}: resubmit must be a function of the record")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "checks", tuple(checks))
        object.__setattr__(self, "resubmit", resubmit)

    def failures(self, records: Sequence[Mapping[str, Any]]) -> list[list[Reason]]:
        """For each record, the reasons it fails (an empty list when it passes)."""
        out: list[list[Reason]] = [[] for _ in records]
        for check in self.checks:
            for reasons, found in zip(out, check.run(records), strict=True):
                reasons += found
        return out


def checks_by_kind(declared: Iterable[RecordChecks]) -> dict[str, RecordChecks]:
    """The workflow's checks by kind; a kind declared twice is a definition error."""
    by_kind: dict[str, RecordChecks] = {}
    for item in declared:
        if not isinstance(item, RecordChecks):
            raise WorkflowDefinitionError(f"checks must be RecordChecks(...), not {type(item).__name__}")
        if item.kind in by_kind:
            raise WorkflowDefinitionError(f"record kind {item.kind!r} has checks declared twice")
        by_kind[item.kind] = item
    return by_kind


@dataclass(frozen=True)
class Screening:
    """What ``screen`` did with a batch: the records that passed (in order) and the quarantined ones
    (``{"index", "id", "status", "reasons"}``; status ``quarantined`` or, seen again after a person
    dropped it, ``dropped``)."""

    passed: list[dict[str, Any]]
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    released: list[dict[str, Any]] = field(default_factory=list)
    """Records that fail the checks but a person released earlier (``{"index", "id"}``): they passed."""
