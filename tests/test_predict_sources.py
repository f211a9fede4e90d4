"""``edgetl predict`` on folders, globs and videos: streamed lines, the threshold shown, annotated output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
cv2 = pytest.importorskip("cv2")

from click.testing import CliRunner  # noqa: E402
from train_fixtures import make_dataset, make_image, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.cli import cli  # noqa: E402

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "schemas" / "predict.schema.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import edgetl

    root = tmp_path_factory.mktemp("predsrc")
    data = make_dataset(root / "data", n_train=12, n_val=6)
    config = write_config(root / "c.yaml", data, "linear-probe", epochs=4, lr=0.05)
    edgetl.train(config, out=root / "run", log=None,
                 train={"threshold": {"policy": "recall", "class": "defect", "target": 0.8}})
    return root / "run", data


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 6-frame mp4 (mp4v) of the tiny dataset's images: the first 3 defective."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 64))
    assert writer.isOpened()
    for i in range(6):
        writer.write(cv2.resize(make_image(rng, defect=i < 3), (64, 64)))
    writer.release()
    return path


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_predict_a_folder_prints_one_line_per_image_with_the_threshold(run):
    run_dir, data = run
    code, out, err = invoke("predict", run_dir, data / "val")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 12 and "Is a directory" not in out + err
    threshold = json.loads((run_dir / "metrics.json").read_text())["threshold"]
    for line in lines:  # "path: defect 0.507 (threshold 0.504) -> defect  2.1 ms"
        assert f"(threshold {threshold:.3f}) -> " in line and line.split(": ")[1].startswith("defect 0.")
    assert lines[0].startswith(str(data / "val" / "defect" / "defect_000.png"))


def test_predict_json_lines_for_a_quoted_glob(run):
    run_dir, data = run
    code, out, err = invoke("predict", run_dir, str(data / "val" / "*" / "*_00[01].png"), "--json")
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [Path(d["image"]).name for d in docs] == ["defect_000.png", "defect_001.png", "good_000.png",
                                                      "good_001.png"]
    for doc in docs:
        import jsonschema

        jsonschema.validate(doc, SCHEMA)
        assert doc["label"] == ("defect" if doc["scores"]["defect"] >= doc["threshold"] else "good")


def test_predict_save_writes_annotated_images_under_their_relative_names(run, tmp_path):
    run_dir, data = run
    code, _, err = invoke("predict", run_dir, data / "val", "--save", tmp_path / "out")
    assert code == 0, err
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert len(written) == 12 and written[0] == "defect/defect_000.png"
    image = cv2.imread(str(tmp_path / "out" / written[0]))
    assert image.shape == (320, 320, 3)  # 40 px enlarged so the banner is legible
    original = cv2.resize(cv2.imread(str(data / "val" / written[0])), (320, 320), interpolation=cv2.INTER_NEAREST)
    assert np.abs(image[:30].astype(int) - original[:30]).mean() > 20  # the banner is drawn


def test_predict_a_video_streams_frames_and_saves_an_annotated_video(run, video, tmp_path):
    run_dir, _ = run
    code, out, err = invoke("predict", run_dir, video, "--json", "--save", tmp_path / "out")
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["frame"] for d in docs] == list(range(6)) and {d["image"] for d in docs} == {str(video)}
    saved = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    frames = 0
    while saved.read()[0]:
        frames += 1
    assert frames == 6 and int(saved.get(cv2.CAP_PROP_FRAME_WIDTH)) == 320
    code, out, _ = invoke("predict", run_dir, video)
    assert code == 0 and out.splitlines()[0].startswith(f"{video} #0: defect ")


def test_stream_is_lazy_one_image_at_a_time(run, tmp_path):
    import shutil

    import edgetl
    from edgetl.errors import DataError

    run_dir, data = run
    folder = tmp_path / "imgs"
    shutil.copytree(data / "val" / "good", folder)
    results = edgetl.load(run_dir).stream(folder)
    first = next(results)
    assert first.source.endswith("good_000.png")
    (folder / "good_001.png").write_bytes(b"not an image")  # read only when its turn comes
    with pytest.raises(DataError, match="good_001.png"):
        next(results)


def test_bad_sources_are_one_line_errors(run, tmp_path):
    run_dir, _ = run
    code, _, err = invoke("predict", run_dir, tmp_path / "missing.png")
    assert code == 1 and "missing.png: no such file or folder" in err and "Traceback" not in err
    code, _, err = invoke("predict", run_dir, str(tmp_path / "*.png"))
    assert code == 1 and "matches no image files" in err
    (tmp_path / "empty").mkdir()
    code, _, err = invoke("predict", run_dir, tmp_path / "empty")
    assert code == 1 and "no images in the folder" in err


@pytest.mark.skipif(Path("/dev/video9").exists(), reason="a camera 9 exists here")
def test_a_camera_that_cannot_open_is_a_clear_error(run):
    run_dir, _ = run
    code, _, err = invoke("predict", run_dir, "9")
    assert code == 1 and "source '9'" in err and "could not open" in err
