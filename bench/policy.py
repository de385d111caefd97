"""The policy stage alone: one Cedar decision with the parsed policy set cached, against parsing per call.

Evaluates ``pricing.set_price`` requests against the shipped policies (every context different:
a new price each time, so nothing but the parsed set is reused), and, for comparison, the same
decision when the policy set and schema are parsed for every call (what caching by content hash
avoids). Prints a table and writes ``bench/results/policy.json``. Target: under 0.2 ms a decision.

    python bench/policy.py [--decisions N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.policy import Documents, Policies, PolicyRequest, cedar_decimal, load_policies  # noqa: E402
from runtime.settings import POLICIES  # noqa: E402


def request(i: int) -> PolicyRequest:
    change = Decimal(i % 6000 - 3000) / 100  # -30.00 % .. +29.99 %: allow, escalate (1 and 2)
    return PolicyRequest(workflow="price_change", version="1.1.0", action="pricing.set_price",
                         resource=("Sku", f"SKU-{1000 + i % 10}"),
                         context={"currency": "EUR", "amount": cedar_decimal(100 + change),
                                  "current_amount": cedar_decimal(100), "change_pct": cedar_decimal(change),
                                  "abs_change_pct": cedar_decimal(abs(change)), "compensating": False})


def timed(fn, count: int) -> list[float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20000)
    args = parser.parse_args()
    policies = load_policies([POLICIES])
    documents = Documents.read([POLICIES])
    requests = [request(i) for i in range(args.decisions)]
    for r in requests[:500]:
        policies.evaluate(r)  # warm-up
    cached = timed(lambda i: policies.evaluate(requests[i]), args.decisions)
    outcomes = {o: sum(policies.evaluate(r).outcome == o for r in requests[:6000]) for o in ("allow", "escalate", "deny")}
    reparsed = timed(lambda i: Policies(documents).evaluate(requests[i]), max(50, args.decisions // 100))
    rows = {
        "cached": {"median_us": statistics.median(cached), "p95_us": statistics.quantiles(cached, n=20)[18]},
        "parsed_per_call": {"median_us": statistics.median(reparsed),
                            "p95_us": statistics.quantiles(reparsed, n=20)[18]},
    }
    print(f"policy stage: {len(policies.statements)} policies, pricing.set_price, {args.decisions} decisions "
          f"(outcomes over 6000: {outcomes})")
    print(f"{'':<28}{'median':>12}{'p95':>12}")
    for name, row in rows.items():
        print(f"{name:<28}{row['median_us']:>10.1f}us{row['p95_us']:>10.1f}us")
    ratio = rows["parsed_per_call"]["median_us"] / rows["cached"]["median_us"]
    print(f"parsing per call would cost {ratio:.0f}x; target: cached median under 200 us")
    out = ROOT / "bench" / "results" / "policy.json"
    out.write_text(json.dumps({"decisions": args.decisions, "policies": len(policies.statements),
                               "outcomes": outcomes, "rows": rows, "reparse_ratio": ratio,
                               "python": platform.python_version(), "machine": platform.machine()}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
