"""The version record: every workflow version a process serves, with the hash of its code.

A version's code may not change once runs have started on it: a run resumes on the
version it started on, so that version must still mean the same graph. At start-up
every loaded version is registered in ``workflow_versions``; a version whose code
hash differs from the recorded one is refused when runs of it exist (bump the
version instead), and simply re-recorded when none do.

>>> await register_versions(db, registry)   # in runtime.service.open_steward, after migrating
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from runtime import audit, store
from runtime.db import Database
from runtime.errors import WorkflowCodeChanged
from runtime.models import utcnow
from runtime.policy import Policies
from runtime.sdk import Registry, Workflow

SYSTEM = "steward"


def _short(digest: str) -> str:
    return f"{digest[:8]}…"


def register_version(session: Session, wf: Workflow) -> dict[str, str | None] | None:
    """Record ``wf``'s code hash; the audit data of what changed (None when the record already matched),
    or :class:`WorkflowCodeChanged` when its version has runs that started on other code."""
    if store.insert_workflow_version(session=session, name=wf.name, version=wf.version, code_hash=wf.code_hash):
        return {"name": wf.name, "version": wf.version, "code_hash": wf.code_hash, "previous_hash": None}
    row = store.lock_workflow_version(session=session, name=wf.name, version=wf.version)
    if row.code_hash == wf.code_hash:
        return None
    if store.version_has_runs(session=session, workflow=wf.name, version=wf.version):
        raise WorkflowCodeChanged(
            f"workflow {wf.name} {wf.version} changed since runs started on it "
            f"(code hash {_short(row.code_hash)} → {_short(wf.code_hash)}): bump the version",
            details={"name": wf.name, "version": wf.version, "recorded_hash": row.code_hash,
                     "code_hash": wf.code_hash},
        )
    previous, row.code_hash, row.registered_at = row.code_hash, wf.code_hash, utcnow()
    session.flush()
    return {"name": wf.name, "version": wf.version, "code_hash": wf.code_hash, "previous_hash": previous}


async def register_policies(db: Database, policies: Policies) -> None:
    """Keep the loaded policy set by its hash (runs are pinned to it) and audit its first load."""

    def register(session: Session) -> None:
        if store.save_policy_set(session=session, policy_hash=policies.hash, documents=policies.documents.to_json()):
            audit.append(session, kind="policy.loaded", actor=SYSTEM, data={
                "policy_hash": policies.hash, "files": sorted([*policies.documents.policies,
                                                              *policies.documents.schemas]),
                "policies": sorted(policies.statements)})

    await db.run(register)


async def register_versions(db: Database, registry: Registry) -> None:
    """Register every version in ``registry`` in one transaction: all are accepted, or start-up stops.

    Rows are taken in the registry's order (by name and version) and the audit chain last, so that
    concurrent start-ups queue behind each other instead of deadlocking."""

    def register(session: Session) -> None:
        changes = [change for wf in registry if (change := register_version(session, wf)) is not None]
        for change in changes:
            audit.append(session, kind="workflow.registered", actor=SYSTEM, data=change)

    await db.run(register)
