"""``edgetl.threads``: the inference thread count from the CPUs actually free, and passive OpenMP waits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl.errors import UsageError
from edgetl.threads import cgroup_cpu_limit, free_cpus, inference_threads

ROOT = Path(__file__).resolve().parents[1]


def test_cgroup_quota_rounds_up_to_whole_cpus(tmp_path):
    v2 = tmp_path / "cpu.max"
    v1 = (tmp_path / "quota", tmp_path / "period")
    v2.write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2, v1) == 2
    v2.write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, v1) is None
    v2.unlink()
    v1[0].write_text("50000\n")
    v1[1].write_text("100000\n")
    assert cgroup_cpu_limit(v2, v1) == 1
    v1[0].write_text("-1\n")
    assert cgroup_cpu_limit(v2, v1) is None


def test_busy_cpus_are_left_to_their_processes_but_one_thread_always_runs():
    assert free_cpus(available=2, busy=0.3) == 2
    assert free_cpus(available=2, busy=2.1) == 1
    assert free_cpus(available=8, busy=3.0) == 5
    assert free_cpus(available=4, busy=40.0) == 1


def test_threads_given_beat_the_environment_and_a_bad_count_is_one_line(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert inference_threads(2) == (2, "--threads") and inference_threads(None) == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert inference_threads(None)[1] == "free CPUs"
    with pytest.raises(UsageError, match="--threads 0: expected 1 or more"):
        inference_threads(0)
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(UsageError, match="OMP_NUM_THREADS='many'"):
        inference_threads(None)


def test_configure_before_torch_sets_passive_waits_and_torch_takes_the_count():
    pytest.importorskip("torch")
    code = ("from edgetl.threads import configure; n, src = configure(1); import os, torch; "
            "print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads(), src)")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'plugins'}"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "1", "--threads"]
