"""What does a rollout's routing decision cost a submitted run?

Three measurements on a fresh database (SQLite by default, ``--database postgres`` for a fresh
PostgreSQL database on the local server), price_change 1.1.0 stable and 1.2.0 a 30 % canary:

- the decision alone: :func:`runtime.rollout.route` for ``--keys`` distinct keys (SHA-256 bucket);
- the decision as a submit makes it: reading the rollout row in the submit's transaction, routing,
  validating the input against the routed version;
- ``Executor.submit`` end to end (a run queued, audited), routed by its Idempotency-Key, against the same
  submit naming its version (no routing), in the same process and run: the ratio is what routing adds.

Prints a table and writes ``bench/results/routing-<database>.json``; the target is a decision under 1 ms.

    python bench/routing.py [--keys 100000] [--submits 1000] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.databases import fresh  # noqa: E402
from runtime import rollout  # noqa: E402
from runtime.db import Database  # noqa: E402
from runtime.models import Rollout  # noqa: E402
from runtime.service import open_steward  # noqa: E402
from runtime.settings import Settings  # noqa: E402

INPUT = {"items": [{"sku": "SKU-1001", "new_price": "101.00", "currency": "EUR"}], "reason": "bench"}
TARGET_MS = 1.0


def per_call_us(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {"p50_us": round(statistics.median(samples) * 1e6, 2), "p95_us": round(samples[int(len(samples) * .95) - 1] * 1e6, 2)}


async def measure(url: str, keys: int, submits: int) -> dict[str, dict[str, float]]:
    state = Rollout(workflow="price_change", stable="1.1.0", canary="1.2.0", canary_percent=30, revision=1,
                    updated_by="bench", reason="bench")
    started = time.perf_counter()
    for n in range(keys):
        rollout.route(state, workflow="price_change", key=f"order-{n}")
    alone = (time.perf_counter() - started) / keys
    migrated = Database(url)
    migrated.upgrade()
    migrated.engine.dispose()
    settings = Settings(database_url=url, demo=True, sandbox_path=str(Path(tempfile.mkdtemp()) / "sandbox.db"))
    async with open_steward(settings) as steward:
        await steward.executor.change_rollout(workflow="price_change", action="rollout", version="1.2.0", percent=30,
                                              actor="bench", reason="a 30 % canary")
        registry = steward.registry

        def decide(session, key: str) -> str:  # what Executor.submit does in its transaction
            wf, route, _ = rollout.choose(session, registry, "price_change", INPUT, key)
            wf.validate_input(INPUT)
            return route.version

        in_tx = []
        for n in range(submits):
            def timed(session, key=f"tx-{n}") -> None:
                begun = time.perf_counter()
                decide(session, key)
                in_tx.append(time.perf_counter() - begun)
            await steward.db.run(timed, read_only=True)
        routed, named = [], []
        for n in range(submits):  # interleaved, so both see the same database and machine
            begun = time.perf_counter()
            await steward.executor.submit(workflow="price_change", input=INPUT, actor="bench", idempotency_key=f"r-{n}")
            routed.append(time.perf_counter() - begun)
            begun = time.perf_counter()
            await steward.executor.submit(workflow="price_change", input=INPUT, actor="bench", idempotency_key=f"n-{n}",
                                          version="1.1.0")
            named.append(time.perf_counter() - begun)
    return {"route() alone": {"p50_us": round(alone * 1e6, 2), "p95_us": round(alone * 1e6, 2)},
            "decision in the submit's transaction": per_call_us(in_tx),
            "submit, routed": per_call_us(routed), "submit, version named": per_call_us(named)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    with fresh(args.database, "routing") as url:
        rows = asyncio.run(measure(url, args.keys, args.submits))
    ratio = rows["submit, routed"]["p50_us"] / rows["submit, version named"]["p50_us"]
    decision_ms = rows["decision in the submit's transaction"]["p95_us"] / 1000
    print(f"\nrouting, {args.database}: {args.keys:,} keys for route(), {args.submits:,} submits each way\n")
    print("| measured | p50 µs | p95 µs |\n| --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['p50_us']} | {row['p95_us']} |")
    met = decision_ms < TARGET_MS
    print(f"\nsubmit routed / submit naming its version (p50): {ratio:.3f}")
    print(f"target: the decision under {TARGET_MS:g} ms (p95 {decision_ms:.3f} ms): {'met' if met else 'NOT met'}")
    out = ROOT / "bench" / "results" / f"routing-{args.database}.json"
    out.write_text(json.dumps({"benchmark": "routing", "database": args.database, "keys": args.keys,
                               "submits": args.submits, "rows": rows, "routed_over_named_p50": round(ratio, 3),
                               "target_ms": TARGET_MS, "target_met": met,
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}},
                              indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
