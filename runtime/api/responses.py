"""JSON bodies built off the event loop, for answers that can be long (listings, exports).

FastAPI validates and encodes a returned list on the event loop, item by item; for
thousands of rows that is tens of milliseconds in which nothing else is served.
:func:`encode_list` does it inside the read transaction's thread instead, and the
route returns the bytes as they are (its ``response_model`` still documents them).

>>> body = await steward.db.run(lambda s: encode_list(RunPublic, store.list_runs(session=s)), read_only=True)
>>> return json_body(body)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from fastapi import Response
from pydantic import BaseModel, TypeAdapter


@functools.cache
def _list_adapter(model: type[BaseModel]) -> TypeAdapter[Any]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def encode_list(model: type[BaseModel], rows: Iterable[Any]) -> bytes:
    """``rows`` as a JSON array of ``model`` (read from their attributes), as FastAPI would render it."""
    return _list_adapter(model).dump_json([model.model_validate(row) for row in rows])


def json_body(body: bytes) -> Response:
    return Response(content=body, media_type="application/json")
