"""Runs the dispatcher CLI under cProfile timed by the main thread's CPU
clock, so that waiting (epoll) and other threads (pyreqwest's runtime) are
not charged to whatever Python function was on the stack, and writes the
stats to the file named first:

    python -m bench.profiled OUT.prof --config FILE run
"""

from __future__ import annotations

import cProfile
import sys
import time

from dispatcher.cli import main

if __name__ == "__main__":
    out, sys.argv = sys.argv[1], [sys.argv[0], *sys.argv[2:]]
    profile = cProfile.Profile(time.thread_time)
    try:
        profile.runcall(main)
    except SystemExit:
        pass
    finally:
        profile.dump_stats(out)
