"""The sandbox's state in its own SQLite file: CRM records and their associations, prices, the
reply to every idempotency key and how many writes each key caused. A restart keeps all of it.

One connection, used from the event loop under a lock (the sandbox is a demo and test double:
simple beats fast). ``path=None`` keeps the state in memory (tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

OBJECT_TYPES = ("contacts", "companies", "deals", "notes")
SEED_SKUS = [f"SKU-{n}" for n in range(1001, 1011)]
# HubSpot-defined default association types, by (from type, to type)
DEFAULT_ASSOCIATIONS = {
    ("contacts", "companies"): 279, ("companies", "contacts"): 280,
    ("deals", "contacts"): 3, ("contacts", "deals"): 4,
    ("deals", "companies"): 341, ("companies", "deals"): 342,
    ("notes", "contacts"): 202, ("contacts", "notes"): 201,
    ("notes", "deals"): 214, ("deals", "notes"): 213,
    ("notes", "companies"): 190, ("companies", "notes"): 189,
}
OWNERS = [
    {"id": "501", "email": "maria.lopez@example.com", "firstName": "Maria", "lastName": "Lopez", "userId": 9001,
     "teams": [{"id": "71", "name": "EU", "primary": True}]},
    {"id": "502", "email": "kenji.sato@example.com", "firstName": "Kenji", "lastName": "Sato", "userId": 9002,
     "teams": [{"id": "72", "name": "APAC", "primary": True}]},
    {"id": "503", "email": "sam.taylor@example.com", "firstName": "Sam", "lastName": "Taylor", "userId": 9003,
     "teams": [{"id": "73", "name": "NA", "primary": True}]},
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (type TEXT NOT NULL, id INTEGER NOT NULL, properties TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, archived INTEGER NOT NULL DEFAULT 0, archived_at TEXT,
    PRIMARY KEY (type, id));
CREATE TABLE IF NOT EXISTS associations (from_type TEXT NOT NULL, from_id INTEGER NOT NULL, to_type TEXT NOT NULL,
    to_id INTEGER NOT NULL, type_id INTEGER NOT NULL, PRIMARY KEY (from_type, from_id, to_type, to_id, type_id));
CREATE TABLE IF NOT EXISTS prices (sku TEXT NOT NULL, currency TEXT NOT NULL, amount TEXT NOT NULL,
    updated_at TEXT NOT NULL, PRIMARY KEY (sku, currency));
CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, status INTEGER NOT NULL, body TEXT);
CREATE TABLE IF NOT EXISTS writes (key TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ids (name TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS emails (status_id TEXT PRIMARY KEY, email_id INTEGER NOT NULL, message TEXT NOT NULL,
    requested_at TEXT NOT NULL);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SandboxStore:
    def __init__(self, path: str | Path | None = None) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path) if path is not None else ":memory:"
        self.lock = threading.RLock()
        if self.path != ":memory:":  # a new file is readable by its owner only, like Steward's own
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        if self.db.execute("SELECT count(*) FROM ids").fetchone()[0] == 0:
            with self.transaction():
                self.db.execute("INSERT INTO ids VALUES ('object', 1001)")
                self.seed()

    def transaction(self) -> Any:
        store = self

        class _Tx:
            def __enter__(self) -> None:
                store.lock.acquire()
                store.db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind: Any, *_: Any) -> None:
                try:
                    store.db.execute("ROLLBACK" if kind else "COMMIT")
                finally:
                    store.lock.release()

        return _Tx()

    def seed(self) -> None:
        stamp = now()
        self.db.executemany("INSERT INTO prices VALUES (?, 'EUR', '100.00', ?)", [(sku, stamp) for sku in SEED_SKUS])
        self.create("contacts", {"email": "existing.lead@example.com", "firstname": "Existing", "lastname": "Lead"})
        self.create("companies", {"name": "Example GmbH", "domain": "example.com", "country": "DE"})

    # -- objects -------------------------------------------------------------------------

    def next_id(self) -> int:
        (value,) = self.db.execute("UPDATE ids SET next = next + 1 WHERE name = 'object' RETURNING next - 1").fetchone()
        return value

    def create(self, object_type: str, properties: dict[str, Any]) -> dict[str, Any]:
        object_id, stamp = self.next_id(), now()
        props = {k: None if v is None else str(v) for k, v in properties.items()}
        props.update({"hs_object_id": str(object_id), "createdate": stamp, "lastmodifieddate": stamp})
        self.db.execute("INSERT INTO objects VALUES (?, ?, ?, ?, ?, 0, NULL)",
                        (object_type, object_id, json.dumps(props), stamp, stamp))
        return self.get(object_type, object_id)

    def send_email(self, status_id: str, email_id: int, message: dict[str, Any]) -> str:
        stamp = now()
        self.db.execute("INSERT INTO emails VALUES (?, ?, ?, ?)", (status_id, email_id, json.dumps(message), stamp))
        return stamp

    def sent_emails(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT status_id, email_id, message, requested_at FROM emails ORDER BY rowid")
        return [{"statusId": sid, "emailId": eid, "message": json.loads(msg), "requestedAt": at}
                for sid, eid, msg, at in rows.fetchall()]

    def get(self, object_type: str, object_id: Any, *, archived: bool = False) -> dict[str, Any] | None:
        try:
            number = int(object_id)
        except (TypeError, ValueError):
            return None
        row = self.db.execute("SELECT * FROM objects WHERE type = ? AND id = ? AND archived = ?",
                              (object_type, number, int(archived))).fetchone()
        return None if row is None else _record(row)

    def find_by(self, object_type: str, prop: str, value: str) -> dict[str, Any] | None:
        """The live record whose ``prop`` is ``value`` (case-insensitive, as HubSpot's unique properties)."""
        for record in self.all(object_type):
            found = record["properties"].get(prop)
            if found is not None and found.lower() == str(value).lower():
                return record
        return None

    def all(self, object_type: str, *, archived: bool = False) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM objects WHERE type = ? AND archived = ? ORDER BY id",
                               (object_type, int(archived))).fetchall()
        return [_record(row) for row in rows]

    def update(self, object_type: str, object_id: int, properties: dict[str, Any]) -> dict[str, Any]:
        record = self.get(object_type, object_id)
        assert record is not None
        stamp = now()
        props = {**record["properties"], **{k: None if v is None else str(v) for k, v in properties.items()},
                 "lastmodifieddate": stamp}
        self.db.execute("UPDATE objects SET properties = ?, updated_at = ? WHERE type = ? AND id = ?",
                        (json.dumps(props), stamp, object_type, int(object_id)))
        return self.get(object_type, object_id)  # type: ignore[return-value]

    def archive(self, object_type: str, object_id: int) -> None:
        self.db.execute("UPDATE objects SET archived = 1, archived_at = ? WHERE type = ? AND id = ?",
                        (now(), object_type, int(object_id)))

    def associate(self, from_type: str, from_id: int, to_type: str, to_id: int, type_id: int | None = None) -> int:
        """Associate both ways (HubSpot keeps the pair); returns the from->to type id."""
        forward = type_id if type_id is not None else DEFAULT_ASSOCIATIONS[(from_type, to_type)]
        backward = DEFAULT_ASSOCIATIONS.get((to_type, from_type), forward)
        self.db.execute("INSERT OR IGNORE INTO associations VALUES (?, ?, ?, ?, ?)",
                        (from_type, int(from_id), to_type, int(to_id), forward))
        self.db.execute("INSERT OR IGNORE INTO associations VALUES (?, ?, ?, ?, ?)",
                        (to_type, int(to_id), from_type, int(from_id), backward))
        return forward

    def associations(self, from_type: str, from_id: int, to_type: str) -> list[tuple[int, int]]:
        """``(to id, type id)`` of a record's associations to ``to_type``, by to id."""
        return [tuple(row) for row in self.db.execute(
            "SELECT to_id, type_id FROM associations WHERE from_type = ? AND from_id = ? AND to_type = ? "
            "ORDER BY to_id, type_id", (from_type, int(from_id), to_type)).fetchall()]

    # -- prices, idempotency ---------------------------------------------------------------

    def price(self, sku: str, currency: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT sku, currency, amount, updated_at FROM prices WHERE sku = ? AND currency = ?",
                              (sku, currency)).fetchone()
        return None if row is None else dict(zip(("sku", "currency", "amount", "updated_at"), row, strict=True))

    def known_sku(self, sku: str) -> bool:
        return self.db.execute("SELECT 1 FROM prices WHERE sku = ? LIMIT 1", (sku,)).fetchone() is not None

    def set_price(self, sku: str, currency: str, amount: str) -> dict[str, Any]:
        self.db.execute("INSERT INTO prices VALUES (?, ?, ?, ?) ON CONFLICT (sku, currency) DO UPDATE SET "
                        "amount = excluded.amount, updated_at = excluded.updated_at", (sku, currency, amount, now()))
        return self.price(sku, currency)  # type: ignore[return-value]

    def skus(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT DISTINCT sku FROM prices ORDER BY sku").fetchall()]

    def reply(self, key: str) -> tuple[int, Any] | None:
        row = self.db.execute("SELECT status, body FROM replies WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], None if row[1] is None else json.loads(row[1]))

    def remember(self, key: str | None, status: int, body: Any) -> None:
        counted = key or "(no key)"
        self.db.execute("INSERT INTO writes VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET count = count + 1",
                        (counted,))
        if key:
            self.db.execute("INSERT INTO replies VALUES (?, ?, ?)",
                            (key, status, None if body is None else json.dumps(body)))

    # -- views for tests -------------------------------------------------------------------

    @property
    def writes(self) -> Counter[str]:
        with self.lock:
            return Counter(dict(self.db.execute("SELECT key, count FROM writes").fetchall()))

    @property
    def prices(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT sku, currency FROM prices").fetchall()
            return {(sku, currency): self.price(sku, currency) for sku, currency in rows}  # type: ignore[misc]

    @property
    def objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every live record by type and id, with its associations as ``{to type: [ids]}``."""
        with self.lock:
            view: dict[str, dict[str, dict[str, Any]]] = {}
            for object_type in OBJECT_TYPES:
                view[object_type] = {}
                for record in self.all(object_type):
                    record["associations"] = {other: [str(i) for i, _ in self.associations(
                        object_type, int(record["id"]), other)] for other in OBJECT_TYPES if other != object_type}
                    view[object_type][record["id"]] = record
            return view

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _record(row: tuple) -> dict[str, Any]:
    object_type, object_id, properties, created, updated, archived, archived_at = row
    record = {"id": str(object_id), "properties": json.loads(properties), "createdAt": created, "updatedAt": updated,
              "archived": bool(archived)}
    if archived_at:
        record["archivedAt"] = archived_at
    return record
