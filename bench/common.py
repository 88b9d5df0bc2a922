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
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS
