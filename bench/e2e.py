"""Wall time of a full offline run on a sample paper, as JSON.

Runs `reprodesk run PAPER --auto-approve --llm offline` twice in a fresh home with
the installed CLI; the second run is the figure (the first pays one-off costs:
Python bytecode, the embedding model's first load from disk cache).
Usage: python bench/e2e.py [--runs N] [--paper PATH]  (default: the one-mechanism MLA
note; examples/deepseek_v2_note.md for two mechanisms)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs in the same home (>= 2)")
    parser.add_argument(
        "--paper", type=Path, default=ROOT / "examples" / "mla_note.md", help="paper to run"
    )
    args = parser.parse_args()
    cli = shutil.which("reprodesk", path=str(Path(sys.executable).parent)) or "reprodesk"
    walls: list[float] = []
    with tempfile.TemporaryDirectory(prefix="reprodesk-bench-") as home:
        env = {**os.environ, "REPRODESK_HOME": home, "HF_HUB_OFFLINE": "1"}
        for i in range(max(2, args.runs)):
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    cli,
                    "run",
                    str(args.paper),
                    "--auto-approve",
                    "--llm",
                    "offline",
                    "--run-id",
                    f"bench-{i}",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            walls.append(time.perf_counter() - start)
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr, file=sys.stderr)
                raise SystemExit(f"run {i} failed with exit code {proc.returncode}")
    print(
        json.dumps(
            {
                "bench": "e2e_offline_sample_paper",
                "paper": args.paper.name,
                "wall_s_first": round(walls[0], 2),
                "wall_s_second": round(walls[1], 2),
                "wall_s_all": [round(w, 2) for w in walls],
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
