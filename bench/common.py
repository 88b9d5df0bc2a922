"""What the benchmarks share: free ports (the project's own), and CPU time of a
process from /proc."""

from __future__ import annotations

import os
from pathlib import Path

from dispatcher.cluster_up import free_port

__all__ = ["cpu_seconds", "free_port"]

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process, all its threads."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads, summed by thread name (the main
    thread is named after the process)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out[name] = out.get(name, 0.0) + _stat_cpu(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
    return out


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS
