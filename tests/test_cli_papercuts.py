"""What a new user trips over in the first hour: each papercut, fixed, with the message they now see."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.config import RunConfig, load_run_config

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args, **kwargs):
    result = CliRunner().invoke(cli, [str(a) for a in args], **kwargs)
    return result.exit_code, result.stdout, result.stderr


def test_bare_edgetl_prints_help_on_stdout_and_exits_0():
    code, out, err = invoke(prog_name="edgetl")
    assert code == 0 and out.startswith("Usage: edgetl") and "Commands:" in out and err == ""


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """`edgetl … | head`: the reader goes away; no 'internal error: BrokenPipeError'."""
    proc = subprocess.Popen([sys.executable, "-m", "edgetl", "keys", "generate", str(tmp_path / "k"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "EDGETL_LOAD_PLUGINS": ""})
    proc.stdout.close()  # like `head` exiting before edgetl writes
    err = proc.stderr.read().decode()
    assert proc.wait() != 0 and "BrokenPipe" not in err and "internal error" not in err, err


def test_tables_keep_every_cell_whole_when_stdout_is_not_a_terminal():
    code, out, err = invoke("plugins", "list")
    assert code == 0, err
    assert "…" not in out and "backbone:efficientnet_lite0" in out
    assert max(len(line) for line in out.splitlines()) > 80  # not cut to a pretend 80-column terminal


def test_deploy_summary_keeps_a_long_device_url_whole(capsys):
    from types import SimpleNamespace

    from edgetl.cli.deploy_cmd import print_summary

    url = "http://127.0.0.1:37145/a/rather/long/path/to/an/agent"
    print_summary([SimpleNamespace(name=url, result="installed", before="m-v1", after="m-v2", seconds=1.0)],
                  "deploy")
    assert url in capsys.readouterr().err


def test_export_finds_a_shipped_profile_by_name_and_takes_its_format(monkeypatch, tmp_path):
    import edgetl.host.export as export

    seen = {}

    def fake_export_run(run_dir, options):
        seen.update(format=options.format, target=Path(options.target))
        raise export.ExportError("stop here")

    monkeypatch.setattr(export, "export_run", fake_export_run)
    code, out, err = invoke("export", tmp_path, "--target", "x86-onnxruntime-cpu")
    assert code == 1 and "stop here" in err
    assert seen["format"] == "onnx" and seen["target"].name == "x86-onnxruntime-cpu.yaml"
    code, out, err = invoke("export", tmp_path)
    assert code == 2 and "give --format (onnx, openvino, tensorrt, …) or --target PROFILE" in err
    code, out, err = invoke("export", tmp_path, "--target", "x86-openvino")
    assert code == 1 and "did you mean 'x86-openvino-cpu'" in err


@pytest.mark.slow
def test_the_wheel_ships_device_profiles_and_example_configs(tmp_path):
    # setuptools builds in the source tree (build/, *.egg-info): build a copy, the checkout is never written to
    nested = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")

    def ignore(folder: str, names: list[str]) -> set[str]:  # a working checkout's outputs stay behind
        top = {".git", ".venv", ".ruff_cache", ".pytest_cache", "runs", "data", "demo-out"}
        return set(nested(folder, names)) | (top & set(names) if Path(folder) == ROOT else set())

    source = shutil.copytree(ROOT, tmp_path / "src", symlinks=True, ignore=ignore)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(source)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    wheel = next(tmp_path.glob("edgetl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for profile in (ROOT / "targets").glob("*.yaml"):
        assert f"edgetl/targets/{profile.name}" in names
    for config in (ROOT / "examples" / "defect_detection").glob("*.yaml"):
        assert f"edgetl/configs/{config.name}" in names
    assert "edgetl/cli/config_cmd.py" in names


def test_readme_host_install_has_the_data_extra_and_pyproject_has_no_placeholder_url():
    readme = (ROOT / "README.md").read_text()
    host = re.search(r"Install on a host: `pip install 'edgetl\[([a-z,]+)\]'`", readme)
    assert host and {"train", "data", "onnxruntime", "openvino"} <= set(host.group(1).split(","))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert ".invalid" not in pyproject and "example.com" not in pyproject


def test_eval_of_a_split_root_points_at_the_split(tmp_path):
    from edgetl.data.folder import not_a_label_error

    for split in ("train", "val", "test"):
        for label in ("good", "defect"):
            (tmp_path / "elpv" / split / label).mkdir(parents=True)
    message = str(not_a_label_error(tmp_path / "elpv", "test", ["defect", "good"]))
    assert "class folder 'test' is not a label of the model ['defect', 'good']" in message
    assert f"give one split, e.g. {tmp_path / 'elpv' / 'test'}" in message and "train, val" in message
    plain = str(not_a_label_error(tmp_path / "elpv" / "test", "scratch", ["defect", "good"]))
    assert "split root" not in plain


def test_a_swapped_key_says_which_key_belongs_where(tmp_path):
    from edgetl.errors import EdgetlError
    from edgetl.keys import generate_keypair, load_private_key, load_public_key

    key, pub = generate_keypair(tmp_path / "line1")
    with pytest.raises(EdgetlError, match=r"that is the public key; sign with the private key .*line1\.key"):
        load_private_key(pub)
    with pytest.raises(EdgetlError, match=r"that is the private key; trust the public key .*line1\.pub"):
        load_public_key(key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_device_urls_need_a_scheme_and_refused_connections_name_the_agent():
    from edgetl.deploy.client import DeviceClient
    from edgetl.errors import DeployError

    with pytest.raises(DeployError, match=r"cam1:8470: a device URL starts with https:// .*e\.g\. https://cam1:8470$"):
        DeviceClient("cam1:8470", "token")
    with pytest.raises(DeployError, match=r"e\.g\. https://cam1:8470$"):
        DeviceClient("cam1", "token")
    port = _free_port()
    with DeviceClient(f"http://127.0.0.1:{port}", "token") as client, pytest.raises(DeployError) as exc:
        client.health()
    assert f"is `edgetl agent serve` running on 127.0.0.1 port {port}?" in str(exc.value)


def test_relative_data_paths_say_they_resolve_from_the_working_directory(tmp_path, monkeypatch):
    from edgetl.errors import DataError
    from edgetl.host.splits import _load

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as exc:
        _load("data/nowhere/train", "data.train", False, [])
    assert f"relative paths resolve from the working directory {tmp_path}" in str(exc.value)
    with pytest.raises(DataError) as exc:
        _load(str(tmp_path / "abs"), "data.train", False, [])
    assert "working directory" not in str(exc.value)


def test_agent_serve_refuses_a_short_token(tmp_path):
    (tmp_path / "tok").write_text("abc\n")
    code, out, err = invoke("agent", "serve", "--state-dir", tmp_path / "s", "--token-file", tmp_path / "tok",
                            "--trust", tmp_path / "k.pub")
    assert code == 1 and "the token has 3 characters; use at least 16" in err and "secrets.token_urlsafe" in err


def test_max_bundle_mb_is_one_integer_option_everywhere():
    types = []
    for path in (("agent", "serve"), ("bundle", "verify")):
        command = cli
        for name in path:
            command = command.commands[name]
        option = next(p for p in command.params if p.name == "max_bundle_mb")
        types.append(type(option.type))
    assert types == [click.IntRange, click.IntRange]


def test_config_show_prints_the_resolved_config_with_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke("config", "show", "textures-linear-probe", "--set", "train.epochs=3")
    assert code == 0, err
    doc = yaml.safe_load(out)
    assert doc["train"]["epochs"] == 3 and doc["train"]["optimizer"] == "adamw"  # a default, filled in
    assert doc["train"]["threshold"]["class"] == "defect"  # YAML spelling, loadable again
    again = tmp_path / "again.yaml"
    again.write_text(out)
    assert load_run_config(again) == RunConfig.model_validate(doc)
    code, out, err = invoke("config", "show", "textures-linear-probe", "--set", "train.epoch=3")
    assert code == 1 and err.startswith("error: --set train.epoch=3: train.epoch: unknown key 'epoch'; did you "
                                        "mean 'epochs'?")


def test_shell_completion_script_is_what_the_docs_say():
    out = subprocess.run([sys.executable, "-m", "edgetl"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "_EDGETL_COMPLETE": "bash_source", "EDGETL_LOAD_PLUGINS": ""})
    assert "complete" in out.stdout and "_EDGETL_COMPLETE" in out.stdout
    assert '_EDGETL_COMPLETE=bash_source edgetl' in (ROOT / "docs" / "cli.md").read_text()


# -- library noise and progress -------------------------------------------------------------
def _noisy_library_step() -> None:
    from edgetl.cli.common import info

    noisy = logging.getLogger("fakelib")
    noisy.addHandler(logging.StreamHandler(sys.stdout))  # like nncf's handler, made at import time
    noisy.setLevel(logging.INFO)
    noisy.propagate = False
    noisy.info("INFO:fakelib: compressing weights")
    print("No CUDA runtime is found")
    warnings.warn("a TracerWarning", UserWarning, stacklevel=1)
    from edgetl.data.folder import DataWarning

    warnings.warn(DataWarning("skipped 1 unreadable image(s): a.png"), stacklevel=1)  # edgetl's own: shown
    info("edgetl: step done")


@pytest.mark.parametrize("verbose", [False, True])
def test_library_output_is_hidden_unless_verbose(capsys, monkeypatch, verbose):
    from edgetl.cli.common import long_step

    monkeypatch.setenv("EDGETL_VERBOSE", "1" if verbose else "0")
    with long_step("step"):
        _noisy_library_step()
    out, err = capsys.readouterr()
    assert "edgetl: step done" in err
    assert verbose or "skipped 1 unreadable image(s)" in err
    shown = out + err
    for noise in ("compressing weights", "No CUDA runtime"):
        assert (noise in shown) == verbose, shown
    if not verbose:  # (with --verbose, warnings go to Python's handler: pytest collects them, not capsys)
        assert "a TracerWarning" not in shown
    logging.getLogger("fakelib").handlers.clear()


def test_a_failing_step_says_library_output_was_hidden(capsys, monkeypatch):
    from edgetl.cli.common import long_step

    monkeypatch.delenv("EDGETL_VERBOSE", raising=False)
    monkeypatch.delenv("EDGETL_DEBUG", raising=False)
    with pytest.raises(RuntimeError), long_step("step"):
        print("library: something odd")
        raise RuntimeError("boom")
    assert "1 lines of library output were hidden; run with --verbose" in capsys.readouterr().err


def test_a_silent_step_prints_a_heartbeat_line_every_interval():
    from edgetl.progress import Heartbeat, note

    lines: list[str] = []

    def wait_for(pattern: str) -> str:  # polls, so a busy machine only makes the test slower
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [line for line in lines if re.fullmatch(pattern, line)]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in {lines}")

    with Heartbeat("export", write=lines.append, interval=0.2) as beat:
        beat.log("int8/accuracy-control: quantizing")
        wait_for(r"  … export \d+ s: still working after “int8/accuracy-control: quantizing”")
        note("batch 3/10")  # a hidden bar's position: the next beat says it
        wait_for(r"  … export \d+ s: batch 3/10")
    assert lines[0] == "int8/accuracy-control: quantizing"


def test_config_mistakes_name_the_unknown_key_the_mapping_and_the_set_option(tmp_path):
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text("name: x\ndataset: {train: a, val: b}\nbackbone: {name: resnet18}\nstrategy: {name: none}\n")
    code, _, err = invoke("train", renamed)
    assert code != 0 and "dataset: unknown key 'dataset'; did you mean 'data'?" in err, err
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: x\ndata: {train: a, val: b}\nbackbone: resnet18\nstrategy: {name: none}\n")
    code, _, err = invoke("train", bare)
    assert code != 0 and "backbone: expected a mapping, e.g. backbone: {name: resnet18}" in err, err
    code, _, err = invoke("train", bare, "--epochs", "5")
    assert code == 2 and "--set train.epochs=5" in err and "--nproc" not in err, err


def test_a_heartbeat_never_says_the_same_thing_twice_within_its_repeat_time():
    from edgetl.progress import Heartbeat, note

    lines: list[str] = []

    def beats() -> list[str]:
        return [line for line in lines if line.startswith("  … train")]

    def wait_for(n: int) -> None:  # polls: a busy machine only makes the test slower
        deadline = time.monotonic() + 30
        while len(beats()) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    with Heartbeat("train", write=lines.append, interval=0.05, repeat_after=60.0) as beat:
        beat.log("features train")
        wait_for(1)
        time.sleep(0.6)  # a dozen more intervals of silence: still one heartbeat
        assert len(beats()) == 1 and "still working after" in beats()[0], lines
        note("batch 2/9")  # something new to say: said at the next interval
        wait_for(2)
    assert len(beats()) == 2 and beats()[1].endswith("batch 2/9"), lines
