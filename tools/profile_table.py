"""The run's measurements as one table: CSV and JSON, each row with its environment.

Read from a published run folder (`results/<job>/metrics.json`), so it needs no graph:
one row per variant of each job and one per grid row, with the job key, the job's
configuration that tells the rows apart (seed, context lengths), every scalar metric,
and the environment the job reported (torch, device, GPU, threads).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

_ENV = ("torch", "device", "gpu_name", "threads")
_CONFIG = ("seed", "repeats", "steps", "warmup", "threads", "dtype", "device")


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def rows(folder: Path) -> list[dict[str, Any]]:
    """One dict a variant or grid row of every job under `folder / results`."""
    out: list[dict[str, Any]] = []
    for metrics_file in sorted((folder / "results").glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        if not isinstance(metrics, dict) or "recipe" not in metrics:
            continue
        base: dict[str, Any] = {"job": metrics_file.parent.name, "recipe": metrics["recipe"]}
        config = metrics.get("config", {})
        base.update({f"config.{k}": config[k] for k in _CONFIG if _scalar(config.get(k))})
        env = metrics.get("env", {})
        base.update({f"env.{k}": env.get(k) for k in _ENV})
        for name, values in (metrics.get("variants") or {}).items():
            row = {**base, "source": "variant", "variant": name}
            row.update({k: v for k, v in values.items() if _scalar(v)})
            out.append(row)
        for i, grid_row in enumerate(metrics.get("grid") or []):
            row = {**base, "source": f"grid.{i}"}
            row.update({k: v for k, v in grid_row.items() if _scalar(v)})
            out.append(row)
    return out


def write(folder: Path) -> tuple[Path, Path]:
    """`profile.csv` and `profile.json` in the run folder; their paths."""
    table = rows(folder)
    columns = list(dict.fromkeys(k for row in table for k in row))
    csv_path, json_path = folder / "profile.csv", folder / "profile.json"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    json_path.write_text(json.dumps({"columns": columns, "rows": table}, indent=2) + "\n")
    return csv_path, json_path
