"""Errors seen by clients predicting while the agent rolls back 50 times (issue 24), for one checkout.

Four clients post ``/v1/predict`` in a loop over real HTTP while a fifth rolls the agent back and
forth ``--rollbacks`` times; the table counts every answer that is not 200. The runtime is the tiny
ONNX test bundle's, wrapped so that a call still running when ``close()`` is called fails, as it does
with OpenVINO and TensorRT (onnxruntime's close is a no-op, which would hide the bug). Run it once
per checkout, side by side:

    nice -n 10 python benchmarks/agent_rollbacks.py --checkout /path/to/old --label before
    nice -n 10 python benchmarks/agent_rollbacks.py --label after

Writes ``benchmarks/results/agent_rollbacks-<label>.json``. Needs torch (to build the test bundle).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(spec: dict) -> dict:
    """In a process whose ``edgetl`` is the checkout under test: the agent in a thread, the load."""
    sys.path.insert(0, str(ROOT / "tests"))
    from agent_support import StrictRuntime, ThreadAgent, install

    from edgetl.device.model import DeviceModel

    load = DeviceModel.load.__func__

    def strict_load(cls, *args, **kwargs):
        model = load(cls, *args, **kwargs)
        model.runtime = StrictRuntime(model.runtime, delay_s=0.005)
        return model
    DeviceModel.load = classmethod(strict_load)
    image = Path(spec["jpeg"]).read_bytes()
    state = Path(spec["work"]) / f"state-{os.getpid()}"
    with ThreadAgent(state, [Path(spec["pub"])]) as agent, agent.client() as client:
        install(client, Path(spec["v1"]))
        install(client, Path(spec["v2"]))
        stop, codes = threading.Event(), []

        def hammer():
            with agent.client() as own:
                while not stop.is_set():
                    codes.append(own.post("/v1/predict", content=image,
                                          headers={"Content-Type": "image/jpeg"}).status_code)
        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for w in workers:
            w.start()
        rollback_codes = []
        start = time.monotonic()
        for _ in range(spec["rollbacks"]):
            rollback_codes.append(client.post("/v1/model/rollback").status_code)
            time.sleep(0.02)
        seconds = time.monotonic() - start
        stop.set()
        for w in workers:
            w.join(60)
    return {"predictions": len(codes), "errors": sum(c != 200 for c in codes),
            "by_status": {str(c): codes.count(c) for c in sorted(set(codes))},
            "rollbacks_ok": rollback_codes.count(200), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the edgetl source tree the agent runs")
    parser.add_argument("--label", default="after")
    parser.add_argument("--rollbacks", type=int, default=50)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from agent_support import Bundles, resign

    scratch = tempfile.TemporaryDirectory(prefix="edgetl-rollbacks-")  # removed at exit (bundles, agents' state)
    work = Path(scratch.name)
    b = Bundles(work / "bundles")
    # without bundle_version, so that a checkout from before that field installs them too
    v1 = resign(b.v1, work / "v1.edgetl", b.key, edit_manifest=lambda m: m.pop("bundle_version", None))
    v2 = resign(b.v2, work / "v2.edgetl", b.key, edit_manifest=lambda m: m.pop("bundle_version", None))
    jpeg = work / "frame.jpg"
    jpeg.write_bytes(b.jpeg())
    spec = {"work": str(work), "pub": str(b.pub), "v1": str(v1), "v2": str(v2), "jpeg": str(jpeg),
            "rollbacks": args.rollbacks}
    checkout = args.checkout.resolve()
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=f"{checkout}:{checkout}/plugins", OMP_NUM_THREADS="1"),
                         timeout=1800)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.label}: {args.rollbacks} rollbacks ({row['rollbacks_ok']} ok) in {row['seconds']} s under "
          f"4 predicting clients: {row['predictions']} predictions, {row['errors']} errors {row['by_status']}")
    path = ROOT / "benchmarks" / "results" / f"agent_rollbacks-{args.label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"label": args.label, "checkout": str(checkout), "load": os.getloadavg(), **row},
                               indent=2))
    print(f"load average {os.getloadavg()}; wrote {path}")


if __name__ == "__main__":
    main()
