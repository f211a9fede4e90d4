"""The agent's fuzz suite (tests/test_agent_fuzz.py) with a larger, still seeded, example budget.

    nice -n 10 python benchmarks/agent_fuzz.py [--examples 200]

Prints the counts (cases, 5xx, models lost) the suite reports; the exit status is pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="examples per API operation")
    args = parser.parse_args()
    env = dict(os.environ, EDGETL_FUZZ_EXAMPLES=str(args.examples),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins"), str(ROOT / "tests")]))
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                              str(ROOT / "tests" / "test_agent_fuzz.py")], cwd=ROOT, env=env))


if __name__ == "__main__":
    main()
