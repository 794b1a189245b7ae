"""The run ledger: every sandboxed job, keyed by (run id, code hash, parameters).

LangGraph re-runs a node from its start when a run resumes, and even a `sync`
checkpoint is not exactly-once for a node's body (langgraph #8039). The execute
and profiler nodes therefore ask the ledger first: a job that finished is never
launched again; its recorded result is returned instead.

SQLite in WAL mode with a busy timeout, one row per job. A job is written as
`started` before launch and `finished` with its result after, so a crash in
between is visible (and that job is run again: it never finished).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from reprodesk.schemas import Job, RunResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    label TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,          -- started | finished
    launches INTEGER NOT NULL,    -- how many times the job was actually launched
    result TEXT,                  -- RunResult JSON once finished
    started_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_run ON jobs(run_id);
"""


def code_hash(job: Job) -> str:
    material = json.dumps(dict(sorted(job.files.items())), sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def job_key(run_id: str, job: Job) -> str:
    """Same run, same code, same command -> same key."""
    material = json.dumps({"run_id": run_id, **job.key_material()}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:24]


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.executescript(_SCHEMA)

    def finished(self, key: str) -> RunResult | None:
        row = self._conn.execute(
            "SELECT result FROM jobs WHERE key = ? AND state = 'finished'", (key,)
        ).fetchone()
        return RunResult.model_validate_json(row[0]) if row else None

    def start(self, key: str, run_id: str, label: str, job: Job) -> None:
        self._conn.execute(
            "INSERT INTO jobs (key, run_id, label, code_hash, params, state, launches, started_at)"
            " VALUES (?, ?, ?, ?, ?, 'started', 1, ?)"
            " ON CONFLICT(key) DO UPDATE SET state = 'started', launches = launches + 1,"
            " started_at = excluded.started_at",
            (key, run_id, label, code_hash(job), json.dumps(job.argv), time.time()),
        )

    def finish(self, key: str, result: RunResult) -> None:
        self._conn.execute(
            "UPDATE jobs SET state = 'finished', result = ?, finished_at = ? WHERE key = ?",
            (result.model_dump_json(), time.time(), key),
        )

    def launches(self, run_id: str) -> dict[str, int]:
        """label -> times launched, for a run (what the exactly-once test checks)."""
        rows = self._conn.execute(
            "SELECT label, launches FROM jobs WHERE run_id = ?", (run_id,)
        ).fetchall()
        return {label: n for label, n in rows}

    def workdirs(self, run_id: str) -> list[str]:
        """Host job dirs of the run's finished jobs (`RunResult.workdir`), for removal."""
        rows = self._conn.execute(
            "SELECT result FROM jobs WHERE run_id = ? AND state = 'finished' ORDER BY key",
            (run_id,),
        ).fetchall()
        dirs: list[str] = []
        for (text,) in rows:
            workdir = RunResult.model_validate_json(text).workdir
            if workdir and workdir not in dirs:
                dirs.append(workdir)
        return dirs

    def close(self) -> None:
        self._conn.close()
