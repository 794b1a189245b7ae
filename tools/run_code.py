"""Run a job in the sandbox through the ledger: a finished job is never launched twice."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import structlog

from reprodesk.schemas import Job, RunResult
from sandbox.base import Sandbox
from sandbox.ledger import Ledger, job_key

log = structlog.get_logger(__name__)


def code_hash(files: dict[str, str]) -> str:
    """sha256 over a job's files (names and contents): what the code gate approved."""
    data = json.dumps(dict(sorted(files.items())), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class JobOutcome:
    key: str
    result: RunResult
    reused: bool  # True when the ledger already held a finished result


def run_job(sandbox: Sandbox, ledger: Ledger, run_id: str, label: str, job: Job) -> JobOutcome:
    key = job_key(run_id, job)
    done = ledger.finished(key)
    if done is not None:
        log.info("job.reused", label=label, key=key, status=done.status)
        return JobOutcome(key=key, result=done, reused=True)
    ledger.start(key, run_id, label, job)
    log.info("job.start", label=label, key=key, backend=sandbox.name)
    result = sandbox.run(job)
    ledger.finish(key, result)
    log.info("job.end", label=label, key=key, status=result.status, seconds=result.duration_s)
    return JobOutcome(key=key, result=result, reused=False)
