"""Named points in a run's writes where a fault test can kill the process deterministically.

``CLIPRNN_KILL_AT=<point>[:<n>]`` makes the process SIGKILL itself the ``n``-th time (default
the first) it reaches ``<point>``. Unset, every point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "CLIPRNN_KILL_AT"
#: The points a segmentation run passes, in order (``before_write``/``after_write`` per batch).
RUN_POINTS = ("prepared", "before_write", "after_write", "finished")

_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process here if ``CLIPRNN_KILL_AT`` names this point (and hit count)."""
    spec = os.environ.get(KILL_AT)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
