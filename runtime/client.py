"""The CLI's way to Steward's HTTP API: where the server is, whose token to send, and the calls.

Commands that act as a person call the server with a bearer token, so the actor recorded is always
the token's user. The server and token come from ``STEWARD_URL`` / ``STEWARD_TOKEN`` or else from
the credentials ``steward login`` stored (``$XDG_CONFIG_HOME/steward/credentials.json``, readable
by its owner only); the URL defaults to ``http://127.0.0.1:8000``.

Imported only by commands that call the server (``steward --help`` imports nothing heavy).

>>> with Api.from_environment() as api:
...     run = api.post("/api/v1/runs", {"workflow": "price_change", "input": {...}})
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(Exception):
    """A call that did not succeed: ``status`` (0 when the server was not reached), a one-line reason."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", request_id: str = "") -> None:
        super().__init__(message)
        self.message, self.status, self.code, self.request_id = message, status, code, request_id

    @property
    def bad_input(self) -> bool:
        """The request itself was wrong (4xx): the CLI exits 2; else (5xx, unreachable) 1."""
        return 400 <= self.status < 500


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "steward"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def read_credentials() -> dict[str, str]:
    """What ``steward login`` stored, or {}; refuses a file that others can read (it holds a token)."""
    path = credentials_path()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return {}
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ClientError(f"{path} can be read by other users; run `chmod 600 {path}` or `steward login` again",
                          status=400)
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ClientError(f"{path} is unreadable ({exc}); run `steward login` again", status=400) from None
    return {k: v for k, v in stored.items() if k in ("url", "token") and isinstance(v, str)}


def write_credentials(url: str, token: str) -> Path:
    """Store ``url`` and ``token`` for later commands, readable and writable by the owner only; written
    whole or not at all (a new file renamed over the old one)."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):  # left by a login that died half-way
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": url, "token": token}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def forget_credentials() -> bool:
    try:
        credentials_path().unlink()
    except FileNotFoundError:
        return False
    return True


class Api:
    """Calls to one Steward server with one token; problem+json answers become :class:`ClientError`."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}", "User-Agent": "steward-cli"})

    @classmethod
    def from_environment(cls) -> Api:
        """The server and token to use: the environment's, else what ``steward login`` stored. A stored
        token goes only to the server it was stored for, never to another one ``STEWARD_URL`` names."""
        stored = read_credentials()
        url = (os.environ.get("STEWARD_URL") or stored.get("url") or DEFAULT_URL).rstrip("/")
        token = os.environ.get("STEWARD_TOKEN")
        if not token and stored.get("token"):
            if stored.get("url", "").rstrip("/") != url:
                raise ClientError(f"the stored token is for {stored.get('url')}, not {url}: set STEWARD_TOKEN for "
                                  f"{url}, or run `steward login --url {url}`", status=401)
            token = stored["token"]
        if not token:
            raise ClientError("no API token: set STEWARD_TOKEN or run `steward login`", status=401)
        return cls(url, token)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: Any) -> None:
        self._http.close()

    def get(self, path: str, *, timeout: float | None = None, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        return self._call("GET", path, params=query, timeout=timeout)

    def post(self, path: str, body: Any, *, headers: dict[str, str] | None = None) -> Any:
        return self._call("POST", path, json=body, headers=headers)

    def pages(self, path: str, *, limit: int, **params: Any) -> Iterator[dict[str, Any]]:
        """Up to ``limit`` items of a listing, following its cursors."""
        cursor, left = None, limit
        while left > 0:
            page = self.get(path, limit=min(left, 1000), cursor=cursor, **params)
            yield from page["data"][:left]
            left -= len(page["data"])
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def _call(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach Steward at {self.url} ({type(exc).__name__}: {exc}); is it running? "
                              "(STEWARD_URL)") from None
        if response.is_success:
            return response.json() if response.content else None
        raise _problem(response)


def _problem(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = str(body.get("detail") or response.reason_phrase or "request failed")
    errors = body.get("errors") or []
    if errors and isinstance(errors, list):
        fields = "; ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg', '')}" for e in errors
                           if isinstance(e, dict))
        detail = f"{detail} ({fields})" if fields else detail
    if response.status_code == 401:
        detail = f"{detail}; run `steward login` or set STEWARD_TOKEN"
    request_id = str(body.get("request_id") or response.headers.get("X-Request-ID", ""))
    if response.status_code >= 500 and request_id:
        detail = f"{detail} (request id {request_id})"
    return ClientError(detail.replace("\n", " "), status=response.status_code, code=str(body.get("code", "")),
                       request_id=request_id)
