"""Every error Steward raises on purpose.

    StewardError                    root; never raised itself
    ├── InputInvalid                422  input failed its model (field errors attached)
    ├── NotFound                    404
    │   ├── WorkflowNotFound
    │   ├── RunNotFound
    │   ├── ApprovalNotFound
    │   └── TokenNotFound
    ├── Unauthorized                401  missing or unknown bearer token
    ├── Forbidden                   403  the caller is known but may not do this (audited)
    │   └── SeparationOfDuties           the person who started a run may not approve it
    ├── Conflict                    409  the request fits no longer (already decided, finished ...)
    ├── TooManyRequests             429  too many attempts (sign-in); retry after ``retry_after`` seconds
    ├── WorkflowDefinitionError     500  a workflow module is malformed (raised at construction)
    │   └── WorkflowCodeChanged          a version's code changed after runs started on it (start-up refused)
    ├── NonDeterministicReplay      500  a re-executed step proposed another call than the one recorded
    ├── PolicyLoadError             422  a policy or schema file is malformed (names file and line)
    ├── PolicyContextInvalid        500  an action's policy context does not fit its declared schema
    ├── DatabaseUnavailable         503  the database failed or stayed busy after retries (retryable)
    ├── ExecutionStopped                 an execution must stop now (never reaches a client)
    │   ├── RunCancelled                 a person cancelled the run (checked before each call)
    │   └── ExecutionFenced              another worker owns the run now; this execution's writes are refused
    ├── GovernanceError             403  the gate refused
    │   ├── PermissionDenied             scope not granted to the workflow
    │   ├── PolicyDenied                 a policy forbids the action (names the policy and its reason)
    │   └── ApprovalRejected             a person rejected the proposed action
    └── ConnectorError              502  an external system failed
        ├── ConnectorTransient           network, timeout, 429, 5xx (retryable)
        └── ConnectorRejected            4xx: the request itself is wrong (not retryable)

Each class carries a stable ``code``, the HTTP ``status_code`` the API answers
with, and whether retrying the same call may succeed (``retryable``).
"""

from __future__ import annotations

from typing import Any

from langgraph.errors import GraphBubbleUp


class StewardError(Exception):
    """Root of Steward's errors.

    >>> raise RunNotFound("run 'r1' does not exist")
    """

    code = "steward_error"
    status_code = 500
    retryable = False

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        if self.retryable:
            body["retryable"] = True
        return body


class InputInvalid(StewardError):
    code = "input_invalid"
    status_code = 422


class NotFound(StewardError):
    code = "not_found"
    status_code = 404


class WorkflowNotFound(NotFound):
    code = "workflow_not_found"


class RunNotFound(NotFound):
    code = "run_not_found"


class ApprovalNotFound(NotFound):
    code = "approval_not_found"


class TokenNotFound(NotFound):
    code = "token_not_found"


class Unauthorized(StewardError):
    code = "unauthorized"
    status_code = 401


class Forbidden(StewardError):
    code = "forbidden"
    status_code = 403


class SeparationOfDuties(Forbidden):
    code = "sod_violation"


class Conflict(StewardError):
    code = "conflict"
    status_code = 409


class TooManyRequests(StewardError):
    code = "too_many_requests"
    status_code = 429
    retryable = True

    def __init__(self, message: str, *, retry_after: float, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class WorkflowDefinitionError(StewardError):
    code = "workflow_definition_invalid"


class WorkflowCodeChanged(WorkflowDefinitionError):
    """A loaded version's code hash differs from the one recorded when runs started on it.

    >>> raise WorkflowCodeChanged("workflow price_change 1.0.0 changed since runs started on it ...")
    """

    code = "workflow_code_changed"


class NonDeterministicReplay(StewardError):
    """A re-executed step made a different call at a recorded position: the workflow is not deterministic."""

    code = "non_deterministic_replay"


class PolicyLoadError(StewardError):
    """A policy folder cannot be used: ``details`` lists each problem as ``{file, line, message}``."""

    code = "policy_invalid"
    status_code = 422


class PolicyContextInvalid(StewardError):
    code = "policy_context_invalid"


class DatabaseUnavailable(StewardError):
    code = "database_unavailable"
    status_code = 503
    retryable = True


class ExecutionStopped(StewardError, GraphBubbleUp):
    """Stops one execution of a run at once. It bubbles through LangGraph like an interrupt (never
    retried by a node's ``RetryPolicy``, never stored as the step's error)."""

    code = "execution_stopped"


class RunCancelled(ExecutionStopped):
    code = "run_cancelled"


class ExecutionFenced(ExecutionStopped):
    code = "execution_fenced"


class GovernanceError(StewardError):
    code = "governance_refused"
    status_code = 403


class PermissionDenied(GovernanceError):
    code = "permission_denied"


class PolicyDenied(GovernanceError):
    """A policy forbids the action, or none permits it; ``details`` names the policies and their reasons.
    The step may catch it to take another path."""

    code = "policy_denied"


class EditDenied(PolicyDenied):
    """An approver's edit of a request's arguments that the policies deny; the request is unchanged."""

    status_code = 422


class ApprovalRejected(GovernanceError):
    """A person rejected the proposed action; the step may catch it to take another path."""

    code = "approval_rejected"

    def __init__(self, message: str, *, approval_id: str, decided_by: str, comment: str) -> None:
        super().__init__(message, details={"approval_id": approval_id, "decided_by": decided_by})
        self.approval_id = approval_id
        self.decided_by = decided_by
        self.comment = comment


class ConnectorError(StewardError):
    code = "connector_failed"
    status_code = 502

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, details={"status": status} if status else None)
        self.status = status
        self.retry_after = retry_after


class ConnectorTransient(ConnectorError):
    code = "connector_unavailable"
    retryable = True


class ConnectorRejected(ConnectorError):
    code = "connector_rejected"


def is_retryable(exc: BaseException) -> bool:
    """True when the same call may succeed if tried again (the tenacity predicate)."""
    return isinstance(exc, StewardError) and exc.retryable
