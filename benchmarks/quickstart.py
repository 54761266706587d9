"""Wall-clock of the whole quickstart (corpus -> train -> eval -> demo) from an empty folder,
the figure behind the README's "under 10 minutes on a 2-core CPU". Prints the fraction of the
10-minute budget used, last.

    .venv/bin/python benchmarks/quickstart.py [--artifacts DIR] [--npm-cache DIR]

--npm-cache reuses already-downloaded npm tarballs (still integrity-checked) to spare the registry;
leave it out to time a true first run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from latentspace.cli import quiet_libraries
from latentspace.quickstart import run_quickstart

BUDGET_S = 600.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifacts", type=Path, default=None, help="empty folder to run in (default: a temp dir)")
    ap.add_argument("--npm-cache", type=Path, default=None)
    args = ap.parse_args()
    quiet_libraries()
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="latentspace-bench-"))
    if args.npm_cache:
        shutil.copytree(args.npm_cache, artifacts / "cache" / "npm", dirs_exist_ok=True)
    t = time.perf_counter()
    result = run_quickstart(artifacts)
    total = time.perf_counter() - t
    report = json.loads(result.eval_json.read_text())
    print(
        json.dumps(
            {
                "stages_s": {k: round(v, 1) for k, v in result.seconds.items()},
                "total_s": round(total, 1),
                "main_metrics": {t["name"]: t["metrics"][t["main_metric"]] for t in report["tasks"]},
            }
        )
    )
    print(f"quickstart took {total:.0f} s of a {BUDGET_S:.0f} s budget: {total / BUDGET_S:.2f}x")


if __name__ == "__main__":
    main()
