"""A server's process tree, read from /proc, and the memory it holds: what the serving benchmarks share
(bench/paged_kv.py, bench/vs_llamacpp.py, bench/chaos.py). `livelm serve` is a tree: the HTTP process,
its engine process (the weights in shared memory between the two) and, when learning, a forkserver
with its updates.

RSS counts a page shared by two processes in each of them; PSS splits it between them, so summed
over a tree it is the memory the tree really holds. RSS is cheap to read (/proc/PID/status); PSS
walks the page tables (/proc/PID/smaps_rollup, ~25 ms for a 1.5 GB tree).
"""
from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def _kib(pids: list[int], file: str, field: str) -> int:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/{file}").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError):
            pass   # the process ended meanwhile
    return total


def rss_kib(pids: list[int]) -> int:
    """Summed resident set size in KiB (shared pages once per process that maps them)."""
    return _kib(pids, "status", "VmRSS:")


def pss_kib(pids: list[int]) -> int:
    """Summed proportional set size in KiB (shared pages split between the processes)."""
    return _kib(pids, "smaps_rollup", "Pss:")
