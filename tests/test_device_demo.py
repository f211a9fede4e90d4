"""`make demo`'s device half (examples/device_demo.py) runs against the real agent as the demo calls it.

The demo is the README's second command; its device step starts `edgetl agent
serve` in a process, deploys a signed bundle and replays an image folder
through the pipeline. Running it here keeps the demo working when the agent's
rules change (e.g. the pipeline's confinement to ``--data-root``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bundle_factory import make_tiny_bundle, make_tiny_data

ROOT = Path(__file__).resolve().parents[1]


def test_device_demo_deploys_and_replays_the_folder_through_the_pipeline(tmp_path):
    from edgetl.keys import generate_keypair

    key, pub = generate_keypair(tmp_path / "release")
    bundle = make_tiny_bundle(tmp_path, key=key)
    images = make_tiny_data(tmp_path) / "val"
    out = tmp_path / "device-out"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "device_demo.py"), "--bundle", str(bundle),
                           "--trust", str(pub), "--images", str(images), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == len(list(images.rglob("*.png")))
    assert {row["label"] for row in rows} <= {"defect", "good"}
