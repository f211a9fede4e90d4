"""The camera path predicts what ``edgetl eval`` predicts: the texture set's test images through a GigE Vision camera.

    python examples/line/camera_accuracy.py [--images data/textures/test]

Serves every test image, in order, from an in-process Aravis fake GigE Vision
camera (examples/line/file_camera.py: RGB8 frames of the image's own size,
decoded as ``edgetl eval`` decodes files), runs ``edgetl agent serve`` with the
``genicam`` source in software-trigger mode, fires one trigger per image and
waits for its result, then compares the agent's accuracy and confusion matrix
with ``edgetl eval`` of the same bundle on the same folder. Prints one JSON line
last: ``{"images", "results", "lost", "camera_accuracy", "eval_accuracy",
"camera_confusion", "eval_confusion", "equal"}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_line import EDGETL, OUT, ROOT, Cell, prepare_bundle  # noqa: E402
from file_camera import FileCamera  # noqa: E402

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "textures" / "test")
    args = parser.parse_args()
    bundle, pub = prepare_bundle(OUT)
    evaluated = json.loads(subprocess.run([*EDGETL, "eval", str(bundle), str(args.images), "--json"], cwd=ROOT,
                                          check=True, capture_output=True, text=True).stdout)
    labels = evaluated["labels"]
    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in SUFFIXES)
    truth = [p.parent.name for p in files]
    from edgetl.preprocess import read_image

    height, width = read_image(files[0]).shape[:2]
    with FileCamera(files, serial="EDGETL-FILES") as camera, \
            Cell(bundle, pub, OUT / "accuracy", roi=(0, 0, width, height), pixel_format="RGB8",
                 serial="EDGETL-FILES", start_camera=False) as cell:
        for i in range(len(files)):
            cell.http.post("/v1/pipeline/trigger").raise_for_status()
            deadline = time.monotonic() + 10
            while cell.status()["frames"] + cell.status()["lost"] <= i and time.monotonic() < deadline:
                time.sleep(0.005)
        time.sleep(0.2)
        results, lost = cell.results(), cell.status()["lost"]
        served = camera.served
    confusion = [[0] * len(labels) for _ in labels]
    correct = 0
    for result, true in zip(results, truth, strict=False):  # the k-th frame served the k-th file
        confusion[labels.index(true)][labels.index(result["label"])] += 1
        correct += result["label"] == true
    summary = {"images": len(files), "served": served, "results": len(results), "lost": lost,
               "camera_accuracy": round(correct / max(len(results), 1), 4),
               "eval_accuracy": round(evaluated["accuracy"], 4), "camera_confusion": confusion,
               "eval_confusion": evaluated["confusion_matrix"], "labels": labels}
    summary["equal"] = (summary["camera_accuracy"] == summary["eval_accuracy"] and confusion == evaluated["confusion_matrix"]
                        and len(results) == len(files))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
