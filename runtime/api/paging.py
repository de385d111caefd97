"""Cursor pagination for every list: ``{"data": [...], "next_cursor": "…" | null}``.

A list is read in a fixed order with a unique key (runs: newest first by
``(created_at, id)``; approvals: oldest first; audit events: by ``seq``). A page is
``limit + 1`` rows: the extra row only says that more follow, and the cursor names the
key of the last row returned. The next page starts strictly after that key (keyset
paging, not an offset), so rows inserted while a client pages never shift a page: no
row is seen twice and no row that existed when paging began is skipped.

A cursor is opaque to clients: base64url JSON naming the list, a digest of the filters
it was made under and the key. A cursor from another list, made under other filters, or
not made by Steward at all is bad input (422 on ``cursor``), never a silently different
listing.

>>> page = Pages("runs", RunPublic, key=lambda run: [run.created_at, run.id])
>>> after = page.start(cursor, status=status)          # None, or the key to continue after
>>> rows = store.list_runs(session=s, status=status, limit=limit + 1, before=after)
>>> return json_body(page.encode(rows, limit, status=status))
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from runtime.errors import InputInvalid

T = TypeVar("T", bound=BaseModel)

MAX_INT_KEY = 2**31 - 1  # integer keys (audit seq) are 32-bit columns
CURSOR_DOC = ("Continue a listing: the `next_cursor` of the previous page. Send the same filters as for the "
              "first page; omit for the first page")
CursorQuery = Query(max_length=1000, pattern=r"^[A-Za-z0-9_-]+$", description=CURSOR_DOC)


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")


class Pages:
    """Cursors and page bodies of one list (see the module docstring)."""

    def __init__(self, name: str, model: type[BaseModel], page: type[Page[Any]],
                 key: Callable[[Any], list[Any]], key_types: Sequence[type]) -> None:
        self.name = name
        self.model = model
        self.page = page
        self.key = key
        self.key_types = tuple(key_types)

    def start(self, cursor: str | None, **filters: Any) -> list[Any] | None:
        """The key to continue after, or None for the first page; :class:`InputInvalid` for a bad cursor."""
        if cursor is None:
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
            if not isinstance(body, dict) or "l" not in body:
                raise ValueError
            if body["l"] != self.name:
                raise _BadCursor(f"a cursor of another list, not of {self.name}")
            if body.get("f") != _digest(filters):
                raise _BadCursor("made under other filters than this request's: send the first page's filters")
            return _decode_key(body.get("k"), self.key_types)
        except _BadCursor as exc:
            reason = str(exc)
        except (ValueError, binascii.Error):  # undecodable, not JSON, a key of the wrong shape
            reason = "not a cursor Steward made"
        raise InputInvalid(f"the request is invalid: cursor ({reason})", details=[
            {"loc": ["query", "cursor"], "msg": reason, "type": "cursor_invalid"}])

    def encode(self, rows: Sequence[Any], limit: int, **filters: Any) -> bytes:
        """The page body for up to ``limit + 1`` fetched ``rows``."""
        more = len(rows) > limit
        rows = rows[:limit]
        cursor = self.cursor(self.key(rows[-1]), **filters) if more else None
        return self.page(data=[self.model.model_validate(row) for row in rows], next_cursor=cursor).model_dump_json()

    def cursor(self, key: list[Any], **filters: Any) -> str:
        """The cursor continuing after ``key`` under ``filters``."""
        body = {"l": self.name, "f": _digest(filters), "k": [_encode_value(v) for v in key]}
        raw = json.dumps(body, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class _BadCursor(ValueError):
    pass


def _digest(filters: dict[str, Any]) -> str:
    canonical = json.dumps({k: getattr(v, "value", v) for k, v in sorted(filters.items()) if v is not None},
                           sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _encode_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _decode_key(raw: Any, types: tuple[type, ...]) -> list[Any]:
    if not isinstance(raw, list) or len(raw) != len(types):
        raise ValueError("malformed key")
    key: list[Any] = []
    for value, kind in zip(raw, types, strict=True):
        if kind is datetime:
            if not isinstance(value, str):
                raise ValueError("malformed key")
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                raise ValueError("malformed key")
            try:  # as the column stores it: a time that has no UTC form is no cursor of Steward's
                key.append(moment.astimezone(timezone.utc))
            except OverflowError:
                raise ValueError("malformed key") from None
        elif kind is int:
            if type(value) is not int or not 0 <= value <= MAX_INT_KEY:
                raise ValueError("malformed key")
            key.append(value)
        else:
            if not isinstance(value, kind) or len(str(value)) > 200 or "\x00" in str(value):
                raise ValueError("malformed key")
            key.append(value)
    return key
