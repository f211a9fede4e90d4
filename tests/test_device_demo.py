"""`make demo`'s device half (examples/device_demo.py) runs against the real agent as the demo calls it.

The demo is the README's second command; its device step starts `edgetl agent
serve` in a process, deploys a signed bundle and replays an image folder
through the pipeline. Running it here keeps the demo working when the agent's
rules change (e.g. the pipeline's confinement to ``--data-root``).
"""

from __future__ import annotations

import collections
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_factory import make_tiny_bundle, make_tiny_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """(bundle, public key, image folder): one tiny signed bundle for both tests."""
    from edgetl.keys import generate_keypair

    root = tmp_path_factory.mktemp("demo")
    key, pub = generate_keypair(root / "release")
    return make_tiny_bundle(root, key=key), pub, make_tiny_data(root) / "val"


def test_device_demo_deploys_and_replays_the_folder_through_the_pipeline(tmp_path, signed):
    bundle, pub, images = signed
    out = tmp_path / "device-out"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "device_demo.py"), "--bundle", str(bundle),
                           "--trust", str(pub), "--images", str(images), "--out", str(out), "--reject", "defect",
                           "--route", "good=keep,defect=second-look"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == len(list(images.rglob("*.png")))
    assert {row["label"] for row in rows} <= {"defect", "good"}
    # the summary the demo prints: a confusion of folder x prediction and the line's keep/reject decision
    pairs = [(Path(r["source"]).parts[0], r["label"]) for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["confusion"] == {t: dict(sorted(c.items())) for t, c in sorted(
        {t: collections.Counter(p for tt, p in pairs if tt == t) for t, _ in pairs}.items())}
    reject = summary["reject"]
    assert reject["defective"] == sum(t == "defect" for t, _ in pairs)
    assert reject["rejected_good"] == sum(t == "good" and p == "defect" for t, p in pairs)
    assert summary["accuracy"] == sum(t == p for t, p in pairs) / len(pairs)
    assert "true class" in proc.stdout and "the line's decision, reject when the model says defect" in proc.stdout
    # the routing: per true class, the parts kept / sent to a second look / rejected, from the agent's labels
    routing = proc.stdout.split("the line's routing, good -> keep, defect -> second-look:")[1].splitlines()
    for true in ("defect", "good"):
        row = next(line.split() for line in routing if line.startswith(true))
        counts = summary["confusion"][true]
        assert [int(row[1]), int(row[2]), int(row[4]), int(row[6])] == [
            sum(counts.values()), counts.get("good", 0), counts.get("defect", 0), 0]  # count, share, count, ...


def test_device_demo_refuses_a_reject_name_the_bundle_and_folders_lack(tmp_path, signed, monkeypatch):
    """The script's own check, before any agent starts: run here (the script is what runs, not its process)."""
    bundle, pub, images = signed
    monkeypatch.setattr(sys, "argv", ["device_demo.py", "--bundle", str(bundle), "--trust", str(pub),
                                      "--images", str(images), "--reject", "p067", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "examples" / "device_demo.py"), run_name="__main__")
    message = str(stop.value.code)  # sys.exit(message): printed to stderr, exit status 1
    assert "--reject p067: neither a label of" in message and "(defect, good)" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_full_demo_trains_the_four_class_recipe_and_rejects_elpv_labels(monkeypatch):
    """`make demo`'s main job is the ELPV recipe; the keep/reject labels it passes the replay are ELPV's."""
    import importlib.util

    from edgetl.config import load_run_config
    from edgetl.data.elpv import FOUR

    monkeypatch.delenv("DEMO", raising=False)
    spec = importlib.util.spec_from_file_location("edgetl_demo_script", ROOT / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    cfg = load_run_config(demo.CONFIGS["full"])
    assert cfg.name == "elpv-four-partial" and cfg.train.image_size == 300
    # the recipe that won on the 5-fold mean (docs/training.md): the top stages trained, logit-adjusted loss
    assert cfg.strategy.name == "partial-finetune" and cfg.train.logit_adjustment == 0.3
    assert demo.train_env() == {"EDGETL_MALLOC": "keep"}
    assert set(demo.reject_labels().split(",")) == {"p067", "p100"} <= set(FOUR)
    route = dict(item.split("=") for item in demo.route_args()[1].split(","))
    assert route == {"p000": "keep", "p033": "second-look", "p067": "second-look", "p100": "reject"}
