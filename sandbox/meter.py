"""What a running job uses, sampled from the host: memory, tmpfs and disk.

- Memory is the PSS (proportional set size) of the job's processes, from
  /proc/<pid>/smaps_rollup: a page shared by N processes counts 1/N in each, so a fork
  bomb of 300 copies of one interpreter weighs about one interpreter, not 300 (summed
  RSS counted the shared pages once per process). Where smaps_rollup cannot be read,
  VmRSS stands in. To that comes what the job holds in its private /tmp and /dev/shm:
  tmpfs pages are RAM that belongs to no process.
- Disk is everything the job wrote: its folder (each entry counts its allocated blocks,
  and at least one 4 KiB block, so a million empty files fill a quota too) and its
  /tmp and /dev/shm.

A job over `memory_mb` is killed as "oom"; one over `disk_mb` as "quota". Both are
samples (every `WATCHDOG_EVERY_S`): a job can overshoot by what it allocates or writes
between two of them. The hard caps are elsewhere: RLIMIT_AS for CPU jobs, the tmpfs
sizes, RLIMIT_FSIZE (at most the disk quota) for any one file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from reprodesk.schemas import Limits

MB = 1024 * 1024
MIN_ENTRY_BYTES = 4096
TMPFS_MOUNTS = ("/tmp", "/dev/shm")
WATCHDOG_EVERY_S = 0.2


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from one scan of /proc; `root` first."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(sorted(children.get(pid, ()), reverse=True))
    return tree


def _field_kb(path: str, key: bytes) -> int | None:
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pss_mb(pids: list[int]) -> float:
    """Summed PSS of `pids` in MB (VmRSS for a process whose smaps_rollup is unreadable)."""
    kb = 0
    for pid in pids:
        value = _field_kb(f"/proc/{pid}/smaps_rollup", b"Pss:")
        if value is None:
            value = _field_kb(f"/proc/{pid}/status", b"VmRSS:")
        kb += value or 0
    return kb / 1024


def tmpfs_used_bytes(pid: int) -> tuple[int, bool]:
    """Bytes in the /tmp and /dev/shm that process `pid` sees, and whether one is full.

    Read through /proc/<pid>/root, so `pid` must be a process inside the sandbox's mount
    namespace: for a process on the host's own namespace this would be the host's /tmp.
    """
    used, full = 0, False
    for mount in TMPFS_MOUNTS:
        try:
            st = os.statvfs(f"/proc/{pid}/root{mount}")
        except OSError:
            continue
        used += (st.f_blocks - st.f_bfree) * st.f_frsize
        full = full or (st.f_blocks > 0 and st.f_bavail * st.f_frsize < MB)
    return used, full


def dir_usage_bytes(path: Path) -> int:
    """Bytes allocated under `path` (at least 4 KiB an entry), never following a symlink."""
    total = 0
    todo = [str(path)]
    while todo:
        current = todo.pop()
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += max(st.st_blocks * 512, MIN_ENTRY_BYTES)
            if stat.S_ISDIR(st.st_mode):
                todo.append(entry.path)
    return total


@dataclass
class Meter:
    """Samples one job; says when it must be killed, and why.

    `tmpfs_depth`: how far below the sampled tree's root the sandbox starts (cold bwrap:
    2, below our helper and bwrap's monitor, which live on the host's mount namespace
    and are not the job's memory; the warm worker: 0, the job's init), through which
    its private tmpfs mounts are read; None when the job has no private tmpfs that we
    can read (subprocess; Docker, whose cgroup counts it).
    """

    limits: Limits
    disk_dirs: list[Path]
    tmpfs_depth: int | None = None
    memory_watchdog: bool = True
    peak_memory_mb: float = 0.0
    peak_disk_mb: float = 0.0
    tmpfs_full: bool = False
    oom: str = ""
    quota: str = ""
    _tmpfs_mb: float = field(default=0.0, repr=False)

    def sample(self, root: int) -> bool:
        """Measure the tree under `root` now; True when the job is over a limit."""
        pids = process_tree(root)
        tmpfs_mb = 0.0
        if self.tmpfs_depth is not None and len(pids) > self.tmpfs_depth:
            used, full = tmpfs_used_bytes(pids[self.tmpfs_depth])
            tmpfs_mb = used / MB
            self.tmpfs_full = self.tmpfs_full or full
        self._tmpfs_mb = tmpfs_mb
        memory = pss_mb(pids[self.tmpfs_depth or 0 :]) + tmpfs_mb
        self.peak_memory_mb = max(self.peak_memory_mb, memory)
        if self.memory_watchdog and memory > self.limits.memory_mb and not self.oom:
            self.oom = (
                f"memory (the processes' PSS plus /tmp and /dev/shm) passed "
                f"{self.limits.memory_mb} MB; the job was killed"
            )
        return self._check_disk(tmpfs_mb, "; the job was killed") or bool(self.oom)

    def check_disk(self) -> bool:
        """Measure only the disk dirs now (Docker, whose tmpfs the cgroup counts as memory)."""
        return self._check_disk(0.0, "; the job was killed")

    def final(self) -> None:
        """After the job: its folder once more (the tmpfs mounts are gone with it)."""
        self._check_disk(self._tmpfs_mb, "")

    def _check_disk(self, tmpfs_mb: float, then: str) -> bool:
        disk = sum(dir_usage_bytes(d) for d in self.disk_dirs) / MB + tmpfs_mb
        self.peak_disk_mb = max(self.peak_disk_mb, disk)
        if disk > self.limits.disk_mb and not self.quota:
            self.quota = (
                f"disk quota of {self.limits.disk_mb} MB exceeded (job folder, /tmp and "
                f"/dev/shm held {disk:.0f} MB){then}"
            )
        return bool(self.quota)


def tmpfs_bytes(limits: Limits) -> int:
    """Size of each of the job's /tmp and /dev/shm: tmpfs_mb, never above the memory limit."""
    return min(limits.tmpfs_mb, limits.memory_mb) * MB


def file_size_bytes(limits: Limits) -> int:
    """RLIMIT_FSIZE: the per-file limit, never above the disk quota."""
    return min(limits.file_size_mb, limits.disk_mb) * MB
