"""Server start-up time, and what the reference-agreement check adds to it.

    .venv/bin/python benchmarks/serve_startup.py --model artifacts/quickstart/model
    .venv/bin/python benchmarks/serve_startup.py --model artifacts/quickstart/model --before /tmp/before/src

Starts `latentspace serve --model SPEC` as a subprocess `--runs` times and reports the seconds
from spawn to the first 200 from /health (every model loaded, runtimes chosen; the reference
check runs right after, beside the first requests, so it is not in this time unless it delays
loading). With
`--before SRC`, the same is done with the package at SRC (e.g. a `git archive` of the commit
before the check) in alternating order, so both see the same machine load. The runtime choice
is cached by the first start (one extra start, not timed). Then, in `--runs` fresh processes,
the model load and the first `reference_agreement` after it, timed apart: what the check adds to
a start, free of the spread between whole starts on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

SRC = Path(__file__).resolve().parent.parent / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_once(model: str, src: Path, timeout: float = 300.0) -> float:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(src)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentspace", "serve", "--model", model, "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if time.perf_counter() - started > timeout:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


FIRST_CHECK = """
import json, sys, time
from latentspace.runtime.agreement import reference_agreement
from latentspace.serve.models import load_served_model
started = time.perf_counter()
served = load_served_model("m", sys.argv[1])
loaded = time.perf_counter() - started
started = time.perf_counter()
agreement = reference_agreement(served.model)
print(json.dumps([loaded, time.perf_counter() - started, {m: a.to_dict() for m, a in agreement.items()}]))
"""


def first_check(model: str) -> tuple[float, float, dict]:
    """In a fresh process (as at start-up: the first forwards pay their one-time costs): the
    seconds to load the model on its runtimes, then the seconds of the first check."""
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CHECK, model],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    loaded, checked, agreement = json.loads(out.splitlines()[-1])
    return loaded, checked, agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="artifacts/quickstart/model")
    parser.add_argument("--before", type=Path, help="src/ of the package without the check, to compare with")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(describe())
    start_once(args.model, SRC)  # the runtime choice is measured once and cached
    trees = {"with the check": SRC, **({"before": args.before} if args.before else {})}
    times: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, src in trees.items():
            times[name].append(start_once(args.model, src))
    for name, values in times.items():
        print(f"start-up to /health 200, {name}: median {statistics.median(values):.2f} s of {values}")
    runs = [first_check(args.model) for _ in range(args.runs)]
    loads, checks = [r[0] for r in runs], [r[1] for r in runs]
    print(
        f"in a fresh process: model load {statistics.median(loads):.2f} s, then the first reference check "
        f"{statistics.median(checks) * 1000:.0f} ms (medians of {args.runs}; checks {[round(c, 3) for c in checks]}): "
        f"{runs[-1][2]}"
    )


if __name__ == "__main__":
    main()
