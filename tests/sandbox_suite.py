"""Constants and helpers of the sandbox suites in tests/integration/sandbox/."""

from __future__ import annotations

import os
from typing import Any

from reprodesk.schemas import Job, Limits, RunResult
from sandbox import Sandbox

TEST_IMAGE = os.environ.get("REPRODESK_DOCKER_IMAGE", "reprodesk-sandbox:test")
ISOLATING = ["bwrap", "bwrap-warm", "docker"]
EVERY = [*ISOLATING, "subprocess"]
# The warm worker's RLIMIT_AS counts the preloaded torch (about 0.6 GB) in every job.
MEMORY_MB = {"bwrap": 1024, "bwrap-warm": 2048, "docker": 1024, "subprocess": 1024}
SMALL_MEMORY_MB = {"bwrap": 256, "bwrap-warm": 1024, "docker": 256}
ALIVE = "import json\nprint(json.dumps({'alive': True}))\n"


def limits(box: Sandbox, **overrides: Any) -> Limits:
    values: dict[str, Any] = {"wall_s": 30, "memory_mb": MEMORY_MB[box.name]}
    values["output_bytes"] = 64_000
    return Limits(**{**values, **overrides})


def run(box: Sandbox, code: str, *args: str, lim: Limits | None = None) -> RunResult:
    job = Job(files={"main.py": code}, argv=["python", "main.py", *args], limits=lim or limits(box))
    return box.run(job)
