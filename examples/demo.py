"""`make demo`: the longest end-to-end path edgetl has, on the embedded default data.

Every step is an ``edgetl`` command a user would type, run as a subprocess so
the demo exercises exactly the command line. ``DEMO=quick`` swaps ELPV for the
synthetic texture set so the whole demo takes a couple of minutes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUICK = os.environ.get("DEMO", "") == "quick"


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def edgetl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one edgetl command, echoing it first, streaming its output."""
    cmd = [str(BIN / "edgetl"), *args]
    print("$ edgetl " + " ".join(shlex.quote(a) for a in args), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    if check and proc.returncode != 0:
        sys.exit(f"demo: 'edgetl {' '.join(args)}' failed with exit status {proc.returncode}")
    return proc


def main() -> None:
    start = time.perf_counter()
    step("edgetl and its plugins")
    edgetl("--version")
    edgetl("plugins", "list")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
