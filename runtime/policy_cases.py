"""Table-driven policy tests: ``policies/tests/*.yaml``, each a list of request → expected decision.

A case names the action, the resource, the context (decimals as strings, e.g. ``"10.0001"``) and
what must come out; ``workflow``/``version`` default to a workflow no policy names::

    - name: a move of exactly 10 % needs nobody
      action: pricing.set_price
      resource: {type: Sku, id: SKU-1001}
      context: {currency: EUR, amount: "110.00", current_amount: "100.00", change_pct: "10.0",
                abs_change_pct: "10.0", compensating: false}
      expect: allow
    - name: one cent more needs a pricing manager
      ...
      expect: escalate
      roles: [pricing_manager]          # optional: checked when given
      approvals: 1                      # optional
      policies: [pricing.change_over_10_pct]   # optional: the determining policies, exactly

>>> results = run_cases(load_policies(folders), Path("policies/tests"))
>>> [r for r in results if not r.passed]
[]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import PolicyContextInvalid, PolicyLoadError
from runtime.policy import Policies, PolicyRequest

OUTCOMES = ("allow", "deny", "escalate")
KEYS = {"name", "workflow", "version", "action", "resource", "context", "expect", "roles", "approvals", "policies"}


@dataclass(frozen=True)
class CaseResult:
    file: str
    name: str
    passed: bool
    message: str = ""

    def __str__(self) -> str:
        return f"{'ok  ' if self.passed else 'FAIL'} {self.file}: {self.name}" + (
            f": {self.message}" if self.message else "")


def read_cases(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every case of every ``*.yaml`` file in ``folder``, checked for shape (:class:`PolicyLoadError`)."""
    import yaml

    if not folder.is_dir():
        raise PolicyLoadError(f"policy test folder {str(folder)!r} does not exist")
    cases = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        name = f"{folder.name}/{path.name}"
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise PolicyLoadError(f"{name}:{mark.line + 1 if mark else 0}: not YAML: {problem}") from None
        if not isinstance(loaded, list):
            raise PolicyLoadError(f"{name}: a policy test file is a list of cases")
        for index, case in enumerate(loaded, 1):
            where = f"{name}: case {index}"
            if not isinstance(case, dict):
                raise PolicyLoadError(f"{where}: a case is a mapping (name, action, resource, context, expect)")
            unknown = sorted(set(case) - KEYS)
            if unknown:
                raise PolicyLoadError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(KEYS))}")
            missing = [key for key in ("name", "action", "resource", "expect") if key not in case]
            if missing:
                raise PolicyLoadError(f"{where}: missing {', '.join(missing)}")
            if case["expect"] not in OUTCOMES:
                raise PolicyLoadError(f"{where}: expect must be one of {', '.join(OUTCOMES)}, not {case['expect']!r}")
            resource = case["resource"]
            if not (isinstance(resource, dict) and set(resource) == {"type", "id"}):
                raise PolicyLoadError(f"{where}: resource is {{type: ..., id: ...}}")
            cases.append((name, case))
    return cases


def run_case(policies: Policies, file: str, case: dict[str, Any]) -> CaseResult:
    name = str(case["name"])
    request = PolicyRequest(workflow=str(case.get("workflow", "policy_test")), version=str(case.get("version", "0.0.0")),
                            action=case["action"], resource=(case["resource"]["type"], str(case["resource"]["id"])),
                            context=case.get("context") or {})
    try:
        decision = policies.evaluate(request)
    except PolicyContextInvalid as exc:
        return CaseResult(file, name, False, exc.message)
    problems = []
    if decision.outcome != case["expect"]:
        problems.append(f"expected {case['expect']}, got {decision.outcome} "
                        f"({', '.join(decision.policies) or decision.reason})")
    if "policies" in case and sorted(case["policies"]) != sorted(decision.policies):
        problems.append(f"expected policies {sorted(case['policies'])}, got {sorted(decision.policies)}")
    if "roles" in case and sorted(case["roles"]) != sorted(decision.roles):
        problems.append(f"expected roles {sorted(case['roles'])}, got {sorted(decision.roles)}")
    if "approvals" in case and case["approvals"] != decision.approvals:
        problems.append(f"expected {case['approvals']} approvals, got {decision.approvals}")
    return CaseResult(file, name, not problems, "; ".join(problems))


def run_cases(policies: Policies, folder: Path) -> list[CaseResult]:
    return [run_case(policies, file, case) for file, case in read_cases(folder)]
