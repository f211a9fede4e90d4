"""Config files: every target profile validates; bad files give one-line errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetl.config import (
    RunConfig,
    TargetProfile,
    apply_overrides,
    load_fleet,
    load_run_config,
    load_target_profile,
)
from edgetl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TARGETS = sorted((ROOT / "targets").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def test_the_five_device_profiles_ship():
    assert {p.stem for p in TARGETS} >= {"jetson-orin-nano", "jetson-agx-orin", "x86-openvino-cpu",
                                         "x86-onnxruntime-cpu", "x86-nvidia-tensorrt"}


@pytest.mark.parametrize("path", [p for p in EXAMPLES if "name:" in p.read_text() and "strategy:" in p.read_text()],
                         ids=lambda p: p.stem)
def test_every_example_run_config_validates_with_known_strategy_options(path):
    from edgetl.plugins import get_manager

    cfg = load_run_config(path)
    strategy = get_manager().get("strategy", cfg.strategy.name)
    defaults = getattr(strategy, "DEFAULTS", None)
    if defaults is not None:  # a misspelt option would only fail once training starts
        assert set(cfg.strategy.options) <= set(defaults), sorted(set(cfg.strategy.options) - set(defaults))


@pytest.mark.parametrize("path", TARGETS, ids=lambda p: p.stem)
def test_every_target_profile_validates(path):
    profile = load_target_profile(path)
    assert isinstance(profile, TargetProfile) and profile.name == path.stem
    assert profile.fallback[-1].split("/")[0] in profile.precisions


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as exc:
        fn(*args, **kwargs)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_minimal_run_config_gets_design_defaults(tmp_path):
    cfg = load_run_config(write(tmp_path, "name: x\ndata: {train: d/train, val: d/val}\n"))
    assert cfg.backbone.name == "efficientnet_lite0" and cfg.strategy.name == "finetune"
    assert cfg.train.threshold.policy == "argmax" and cfg.train.baseline == "none"
    assert cfg.augment == ["hflip", "vflip", "rot90", "color_jitter"]


def test_set_overrides_nested_keys_with_yaml_values(tmp_path):
    path = write(tmp_path, "name: x\ndata: {train: a}\n")
    cfg = load_run_config(path, ["train.epochs=3", "train.lr=5e-4", "data.val_split=0.2",
                                 "train.threshold.policy=recall", "train.threshold.class=defect",
                                 "train.threshold.target=0.99", "augment=[hflip]"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.val_split) == (3, 5e-4, 0.2)
    assert cfg.train.threshold.class_ == "defect" and cfg.augment == ["hflip"]


def test_missing_file(tmp_path):
    assert one_line_error(load_run_config, tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: file not found"


def test_invalid_yaml_names_line(tmp_path):
    msg = one_line_error(load_run_config, write(tmp_path, "name: x\ndata: [unclosed\n"))
    assert msg.startswith(f"{tmp_path / 'run.yaml'}: not valid YAML (line ")


def test_negative_lr_names_the_field(tmp_path):
    msg = one_line_error(load_run_config, write(tmp_path, "name: x\ndata: {train: a}\ntrain: {lr: -1}\n"))
    assert msg == f"{tmp_path / 'run.yaml'}: train.lr: Input should be greater than 0 (got -1)"


def test_unknown_key_suggests_the_nearest_known_key(tmp_path):
    msg = one_line_error(load_run_config, write(tmp_path, "name: x\ndata: {train: a}\ntrian: {}\n"))
    assert msg.startswith(f"{tmp_path / 'run.yaml'}: trian: unknown key 'trian'; did you mean 'train'?")
    assert "Extra inputs" not in msg
    nested = one_line_error(load_run_config, write(tmp_path, "name: x\ndata: {train: a}\ntrain: {epoch: 3}\n"))
    assert "train.epoch: unknown key 'epoch'; did you mean 'epochs'?" in nested
    alias = one_line_error(load_run_config, write(tmp_path, "name: x\ndata: {train: a}\n"
                                                             "train: {threshold: {clas: defect}}\n"))
    assert "did you mean 'class'?" in alias  # the YAML spelling (alias), not the Python field name


def test_bad_set_key_blames_the_set_option_not_the_file(tmp_path):
    path = write(tmp_path, "name: x\ndata: {train: a}\n")
    msg = one_line_error(load_run_config, path, ["train.epoch=5"])
    assert msg.startswith("--set train.epoch=5: train.epoch: unknown key 'epoch'; did you mean 'epochs'?")
    assert str(path) not in msg
    assert one_line_error(load_run_config, path, ["trian.epochs=5"]).startswith("--set trian.epochs=5: trian:")
    assert one_line_error(load_run_config, path, ["train.epochs=0"]).startswith("--set train.epochs=0: train.epochs:")
    bad_file = write(tmp_path, "name: x\ndata: {train: a}\ntrain: {lr: -1}\n")
    assert one_line_error(load_run_config, bad_file, ["train.epochs=5"]).startswith(f"{bad_file}: train.lr:")


def test_shipped_profiles_and_configs_load_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing called x86-openvino-cpu here: the shipped one is found
    assert load_target_profile("x86-openvino-cpu").format == "openvino"
    assert load_run_config("textures-linear-probe").name == "textures-linear-probe"
    msg = one_line_error(load_target_profile, "x86-openvino")
    assert "no shipped device profile of that name; did you mean 'x86-openvino-cpu'" in msg
    assert one_line_error(load_target_profile, "nowhere/x86.yaml") == "nowhere/x86.yaml: file not found"


def test_missing_required_field(tmp_path):
    msg = one_line_error(load_run_config, write(tmp_path, "name: x\n"))
    assert msg == f"{tmp_path / 'run.yaml'}: data: Field required"


def test_recall_policy_needs_class_and_target(tmp_path):
    msg = one_line_error(load_run_config, write(tmp_path, "name: x\ndata: {train: a}\n"),
                         ["train.threshold.policy=recall"])
    assert "train.threshold: policy 'recall' needs 'class'" in msg


def test_unknown_augmentation(tmp_path):
    msg = one_line_error(load_run_config, write(tmp_path, "name: x\ndata: {train: a}\naugment: [hflip, blur]\n"))
    assert "augment: unknown augmentation 'blur'" in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.epochs"])


def test_top_level_must_be_mapping(tmp_path):
    msg = one_line_error(load_run_config, write(tmp_path, "- a\n- b\n"))
    assert msg.endswith("expected a mapping of keys at the top level, got list")


def test_target_profile_fallback_outside_precisions(tmp_path):
    path = write(tmp_path, "name: t\nformat: onnx\nprecisions: [fp32]\nfallback: [int8/ptq, fp32]\n", "t.yaml")
    assert "fallback step 'int8/ptq' uses precision 'int8'" in one_line_error(load_target_profile, path)


def test_target_profile_unknown_format(tmp_path):
    path = write(tmp_path, "name: t\nformat: onnxx\nprecisions: [fp32]\nfallback: [fp32]\n", "t.yaml")
    assert one_line_error(load_target_profile, path) == \
        f"{path}: format: unknown target 'onnxx'; did you mean 'onnx'? (known: onnx, openvino, tensorrt)"


def test_runtime_settings_are_validated_by_the_profiles_target(tmp_path):
    head = "name: t\nformat: {}\nprecisions: [fp32]\nfallback: [fp32]\n"
    ov = write(tmp_path, head.format("openvino") + "runtime: {performance_hnt: LATENCY}\n", "ov.yaml")
    assert "runtime.performance_hnt: unknown key 'performance_hnt'; did you mean 'performance_hint'?" \
        in one_line_error(load_target_profile, ov)
    ort = write(tmp_path, head.format("onnx") + "runtime: {performance_hint: LATENCY}\n", "ort.yaml")
    assert "runtime.performance_hint: unknown key 'performance_hint' (known here: device, providers, threads)" \
        in one_line_error(load_target_profile, ort)
    trt = write(tmp_path, head.format("tensorrt") + "engine_build: {workspace_mb: 8}\n", "trt.yaml")
    assert "engine_build.workspace_mb: Input should be greater than or equal to 64" \
        in one_line_error(load_target_profile, trt)
    stray = write(tmp_path, head.format("onnx") + "engine_build: {}\n", "stray.yaml")
    assert "engine_build: unknown key 'engine_build'" in one_line_error(load_target_profile, stray)
    profile = load_target_profile("jetson-orin-nano")
    assert profile.engine_build.workspace_mb == 1024 and profile.runtime_settings() == {"device": "GPU"}
    assert (profile.arch, profile.gpu) == ("aarch64", "Orin Nano")


def test_fleet_file(tmp_path):
    good = write(tmp_path, "devices:\n  - {name: a, url: 'https://10.0.0.11:8470', token_file: t}\n"
                           "  - {name: b, url: 'https://10.0.0.12:8470', token_env: B}\n", "fleet.yaml")
    assert [d.name for d in load_fleet(good).devices] == ["a", "b"]
    dup = write(tmp_path, "devices:\n  - {name: a, url: 'https://x:1', token_env: A}\n"
                          "  - {name: a, url: 'https://y:1', token_env: A}\n", "dup.yaml")
    assert "repeated: a" in one_line_error(load_fleet, dup)
    notoken = write(tmp_path, "devices:\n  - {name: a, url: 'https://x:1'}\n", "nt.yaml")
    assert "devices.0: give exactly one of 'token_file' or 'token_env'" in one_line_error(load_fleet, notoken)


def test_run_config_schema_accepts_every_design_key():
    RunConfig.model_validate({
        "name": "elpv-lite0",
        "data": {"train": "data/elpv/train", "val": "data/elpv/val", "target_unlabeled": None},
        "backbone": {"name": "efficientnet_lite0", "pretrained": True},
        "strategy": {"name": "finetune", "options": {}},
        "train": {"epochs": 10, "batch_size": 32, "lr": 1.0e-3, "image_size": None, "optimizer": "adamw",
                  "weight_decay": 0.01, "schedule": {"kind": "cosine", "warmup_epochs": 1},
                  "label_smoothing": 0.0, "dropout": 0.2, "class_weights": "none",
                  "early_stopping": {"metric": "balanced_accuracy", "patience": 5}, "grad_clip": None,
                  "threshold": {"policy": "argmax"}, "baseline": "none", "seed": 0},
        "augment": ["hflip", "vflip", "rot90", "color_jitter", "random_resized_crop", "rotate", "cutout",
                    "mixup", "cutmix"],
    })
