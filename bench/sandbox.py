"""Per-job overhead of each sandbox backend on a trivial torch job, as JSON.

The job is `import torch`, one tiny op and a JSON metrics line: what it costs is
almost all overhead (interpreter start, torch import, sandbox set-up and tear-down).
Each backend runs it once untimed (page cache, first start), then `--repeats` times;
the figure is the wall time of one job as its caller sees it (`Sandbox.run`, or
`subprocess.run` for the host's Python). Backends:

- host_python: the venv's Python as a plain subprocess, no sandbox (the floor for a
  cold process);
- bwrap_cold: `BubblewrapSandbox`, a new sandbox and interpreter per job;
- bwrap_warm: `WarmWorkerSandbox`, a fork of a warm worker per job (its start-up is
  reported apart, as worker_start_ms);
- docker: `sandbox.container.DockerSandbox`, when that module exists and an engine and
  its image answer; otherwise skipped, with the reason.

The aim (the warm-worker issue): warm under 100 ms per job, and at least 10x less than
cold. The machine may be shared: its load average is reported with the figures.

Usage: python bench/sandbox.py [--repeats N] [--docker-image IMAGE]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reprodesk.schemas import Job, Limits

HERE = Path(__file__).resolve().parent
# This file is named like the package it measures: keep bench/ off the import path
# (`python bench/sandbox.py` puts it first), so that `import sandbox` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

SCRIPT = (
    "import json\n"
    "import torch\n"
    "print(json.dumps({'torch': torch.__version__, 'sum': torch.ones(4).sum().item()}))\n"
)
JOB = Job(files={"job.py": SCRIPT}, argv=["python", "job.py"], limits=Limits(wall_s=120))
WARM_AIM_MS = 100.0
SPEEDUP_AIM = 10.0


def summary(walls_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(walls_ms)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]  # nearest rank
    return {
        "median_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(p90, 1),
        "min_ms": round(ordered[0], 1),
        "runs_ms": [round(w, 1) for w in walls_ms],
    }


def timed(run_one: Callable[[], None], repeats: int) -> dict[str, Any]:
    """One untimed warm-up, then `repeats` timed runs; `run_one` raises if a job fails."""
    run_one()
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_one()
        walls.append((time.perf_counter() - start) * 1000)
    return summary(walls)


def sandbox_job(box: Any) -> Callable[[], None]:
    def run_one() -> None:
        result = box.run(JOB)
        if result.status != "ok" or not result.metrics:
            raise RuntimeError(f"{box.name}: {result.status}: {result.message}")

    return run_one


def host_python(work: Path, repeats: int) -> dict[str, Any]:
    (work / "job.py").write_text(SCRIPT)

    def run_one() -> None:
        subprocess.run(
            [sys.executable, "job.py"], cwd=work, capture_output=True, check=True, timeout=120
        )

    return timed(run_one, repeats)


def bwrap_cold(work: Path, repeats: int) -> dict[str, Any]:
    from sandbox.bwrap import BubblewrapSandbox

    return timed(sandbox_job(BubblewrapSandbox(work)), repeats)


def bwrap_warm(work: Path, repeats: int) -> dict[str, Any]:
    from sandbox.worker import WarmWorkerSandbox

    with WarmWorkerSandbox(work) as box:
        start = time.perf_counter()
        box.start()
        started_ms = (time.perf_counter() - start) * 1000
        figures = timed(sandbox_job(box), repeats)
    return {**figures, "worker_start_ms": round(started_ms, 1)}


def docker(work: Path, repeats: int, image: str | None) -> dict[str, Any]:
    try:
        container = importlib.import_module("sandbox.container")
    except ImportError as err:
        return {"skipped": f"not available: sandbox.container cannot be imported ({err})"}
    options = {"image": image} if image else {}
    try:
        box = container.DockerSandbox(work, **options)
    except Exception as err:  # no engine, no image: say why, measure the rest
        return {"skipped": str(err).splitlines()[0] if str(err) else type(err).__name__}
    return {**timed(sandbox_job(box), repeats), "image": image or container.DEFAULT_IMAGE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed jobs per backend")
    parser.add_argument("--docker-image", default=None, help="image for the Docker backend")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="reprodesk-bench-") as tmp:
        root = Path(tmp)
        for name, measure in (
            ("host_python", lambda d: host_python(d, args.repeats)),
            ("bwrap_cold", lambda d: bwrap_cold(d, args.repeats)),
            ("bwrap_warm", lambda d: bwrap_warm(d, args.repeats)),
            ("docker", lambda d: docker(d, args.repeats, args.docker_image)),
        ):
            work = root / name
            work.mkdir()
            try:
                results[name] = measure(work)
            except Exception as err:  # one broken backend must not hide the others
                results[name] = {"failed": f"{type(err).__name__}: {err}"}
            print(f"{name}: {results[name]}", file=sys.stderr)
    warm = results["bwrap_warm"].get("median_ms")
    cold = results["bwrap_cold"].get("median_ms")
    speedup = round(cold / warm, 1) if warm and cold else None
    print(
        json.dumps(
            {
                "bench": "sandbox_job_overhead",
                "job": "import torch, one tiny op, one JSON line",
                "repeats": args.repeats,
                "results": results,
                "warm_vs_cold_speedup": speedup,
                "aims": {
                    f"warm_median_under_{WARM_AIM_MS:g}_ms": warm is not None
                    and warm < WARM_AIM_MS,
                    f"warm_at_least_{SPEEDUP_AIM:g}x_faster_than_cold": speedup is not None
                    and speedup >= SPEEDUP_AIM,
                },
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
