"""The meter's figures, on folders and processes of this test (no sandbox)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from reprodesk.schemas import Limits
from sandbox.meter import (
    MIN_ENTRY_BYTES,
    Meter,
    dir_usage_bytes,
    process_tree,
    pss_mb,
    tmpfs_bytes,
)

MB = 1024 * 1024


def test_dir_usage_counts_allocated_blocks_and_every_entry(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(os.urandom(3 * MB))
    empties = tmp_path / "empties"
    empties.mkdir()
    for i in range(100):  # an inode bomb in miniature
        (empties / f"{i}").touch()
    with open(tmp_path / "sparse", "wb") as fh:
        fh.truncate(512 * MB)  # a sparse file: large in size, nothing on disk
    os.symlink("/", tmp_path / "root-link")  # never followed
    used = dir_usage_bytes(tmp_path)
    assert 3 * MB + 101 * MIN_ENTRY_BYTES <= used < 4 * MB + 110 * MIN_ENTRY_BYTES


def test_meter_flags_a_folder_over_its_quota(tmp_path: Path) -> None:
    meter = Meter(Limits(disk_mb=1), disk_dirs=[tmp_path])
    meter.final()
    assert meter.quota == ""
    (tmp_path / "big").write_bytes(os.urandom(2 * MB))
    meter.final()
    assert meter.quota.startswith("disk quota of 1 MB exceeded")
    assert meter.peak_disk_mb >= 2


def test_pss_of_forked_copies_is_shared_not_multiplied() -> None:
    code = (
        "import os, time\nfor _ in range(8):\n    if not os.fork():\n        break\ntime.sleep(9)"
    )
    # nine copies of one interpreter: a parent and eight forks
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        meter = Meter(Limits(memory_mb=100_000), disk_dirs=[])
        pids = process_tree(proc.pid)
        deadline = time.monotonic() + 10
        while len(pids) < 9 and time.monotonic() < deadline:  # the forks are starting
            time.sleep(0.02)
            pids = process_tree(proc.pid)
        assert len(pids) == 9
        rss_kb = 0
        for pid in pids:
            with open(f"/proc/{pid}/status") as fh:
                rss_kb += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        pss = pss_mb(pids)
        assert 0 < pss < rss_kb / 1024 / 2  # nine copies of one interpreter weigh far less
        assert not meter.sample(proc.pid)
        assert 0 < meter.peak_memory_mb < rss_kb / 1024 / 2
    finally:
        proc.kill()
        proc.wait()


def test_tmpfs_is_never_larger_than_the_memory_limit() -> None:
    assert tmpfs_bytes(Limits(memory_mb=4096, tmpfs_mb=256)) == 256 * MB
    assert tmpfs_bytes(Limits(memory_mb=128, tmpfs_mb=256)) == 128 * MB
