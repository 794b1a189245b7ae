"""Each recipe's CPU default: wall time and peak memory, as JSON.

Runs `python recipes/<name>.py` (its default configuration) in a child process,
directly on the host (no sandbox, so the figure is the recipe's own cost), and
reads the child's peak resident memory from wait4's rusage.
Usage: python bench/recipes.py [--repeats N] [--only mla,grpo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("mla", "deepseek_moe", "grpo", "mtp", "fp8_blockwise")


def run_measured(name: str) -> tuple[float, float, dict[str, object]]:
    """(wall seconds, peak RSS MiB of the child, the recipe's own metrics line)."""
    with tempfile.TemporaryDirectory(prefix="bench-recipe-") as out:
        start = time.perf_counter()
        with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "recipes" / f"{name}.py"), "--out", out],
                stdout=so,
                stderr=se,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            so.seek(0)
            se.seek(0)
            stdout, stderr = so.read(), se.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}: {stderr.strip().splitlines()[-1:]}")
    metrics = json.loads(stdout.strip().splitlines()[-1])
    return wall, usage.ru_maxrss / 1024, metrics  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per recipe (median kept)")
    parser.add_argument("--only", default="", help="comma list of recipes (default: all)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(RECIPES)
    results: dict[str, object] = {}
    for name in names:
        runs = [run_measured(name) for _ in range(max(1, args.repeats))]
        walls = [w for w, _, _ in runs]
        results[name] = {
            "wall_s_median": round(statistics.median(walls), 2),
            "wall_s_min": round(min(walls), 2),
            "peak_rss_mib": round(max(m for _, m, _ in runs), 1),
            "recipe_wall_s": runs[-1][2].get("wall_s"),
            "verdicts": [c.get("verdict") for c in runs[-1][2].get("claims", [])],  # type: ignore[union-attr]
        }
    print(
        json.dumps(
            {
                "bench": "recipes_cpu_default",
                "results": results,
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
