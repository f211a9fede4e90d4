"""The agent's fuzz suite (tests/test_agent_fuzz.py) with a larger, still seeded, example budget.

    nice -n 10 python benchmarks/agent_fuzz.py [--examples 200] [--out benchmarks/results/agent_fuzz.json]

Prints the counts (cases, 5xx, models lost) the suite reports and writes them as JSON; the exit
status is pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNTS = re.compile(r"fuzz: (\d+) cases, (\d+) 5xx, (\d+) models lost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="examples per API operation")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "agent_fuzz.json")
    args = parser.parse_args()
    env = dict(os.environ, EDGETL_FUZZ_EXAMPLES=str(args.examples),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins"), str(ROOT / "tests")]))
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                             str(ROOT / "tests" / "test_agent_fuzz.py")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    found = None
    assert proc.stdout is not None
    for line in proc.stdout:  # passed through as it comes; the counts line remembered
        sys.stdout.write(line)
        found = COUNTS.search(line) or found
    code = proc.wait()
    doc = {"examples": args.examples, "exit_code": code, "seconds": round(time.monotonic() - start, 1)}
    if found:
        doc.update(cases=int(found[1]), **{"5xx": int(found[2])}, models_lost=int(found[3]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    sys.exit(code)


if __name__ == "__main__":
    main()
