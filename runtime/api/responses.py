"""JSON bodies built off the event loop, for answers that can be long (listings, exports).

FastAPI validates and encodes a returned list on the event loop, item by item; for
thousands of rows that is tens of milliseconds in which nothing else is served. A
listing encodes its page inside the read transaction's thread instead (see
``runtime.api.paging``), and the route returns the bytes as they are (its
``response_model`` still documents them).

>>> body = await steward.db.run(lambda s: PAGES.encode(store.list_runs(session=s, limit=101), 100), read_only=True)
>>> return json_body(body)
"""

from __future__ import annotations

from fastapi import Response


def json_body(body: bytes | str) -> Response:
    return Response(content=body, media_type="application/json")
