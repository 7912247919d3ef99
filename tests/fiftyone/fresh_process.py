"""Run a probe script in a fresh Python process (a restart, as a user's next session sees the
database) and read the JSON line it prints last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def probe_json(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> Any:
    """``python -c script args...`` in this environment (or ``env``); its last stdout line as
    JSON. A failing probe raises CalledProcessError."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=os.environ if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
