"""The compatibility stage on its own: what is refused, what is only a warning."""

from __future__ import annotations

import pytest
from bundle_factory import minimal_manifest
from plugin_factory import activate, make_plugin

from edgetl.device.compat import check_compatibility
from edgetl.device.facts import device_facts
from edgetl.errors import InstallError


def manifest(fmt="onnx", precision="fp32", arch="x86_64", runtimes=None, host_flags=None, gpu=None,
             host_arch="x86_64"):
    return minimal_manifest(
        target={"format": fmt, "precision": precision, "files": ["model/model.onnx"]},
        compat={"arch": arch, "host_arch": host_arch, "gpu": gpu, "runtimes": runtimes or {},
                "host_cpu": {"flags": host_flags or []}})


def facts(arch="x86_64", flags=(), versions=None, runtimes=None, gpus=()):
    return {"arch": arch, "cpu": {"flags": list(flags)}, "versions": versions or {"onnxruntime": "1.20.1"},
            "gpus": list(gpus),
            "runtimes": runtimes or {"onnx": {"available": True, "missing": [], "extra": "onnxruntime"},
                                     "tensorrt": {"available": False, "missing": ["tensorrt"], "extra": "tensorrt"}}}


ORIN = {"name": "NVIDIA Jetson (integrated)", "l4t": "# R36 (release), REVISION: 4.0",
        "model": "NVIDIA Jetson Orin Nano Developer Kit"}


def available(*names):
    return {n: {"available": True, "missing": [], "extra": n} for n in names}


def test_a_matching_device_passes_with_no_warnings():
    report = check_compatibility(manifest(runtimes={"onnxruntime": "1.20.0"}), facts())
    assert report["passed"] and report["warnings"] == []
    assert report["runtimes"] == {"onnxruntime": {"bundle": "1.20.0", "device": "1.20.1"}}


def test_a_missing_runtime_or_target_plugin_is_refused_naming_the_extra():
    with pytest.raises(InstallError, match=r"target 'tensorrt' needs tensorrt, missing .*edgetl\[tensorrt\]"):
        check_compatibility(manifest(fmt="tensorrt"), facts())
    with pytest.raises(InstallError, match="needs target 'coreml', which is not installed"):
        check_compatibility(manifest(fmt="coreml"), facts())


def test_arch_mismatch_is_a_warning_for_targets_whose_files_are_portable():
    report = check_compatibility(manifest(arch="aarch64"), facts())
    assert report["warnings"] == ["exported for aarch64, running on x86_64 (onnx files are portable)"]
    assert report["bound_to"] == ["cpu_features"]  # the onnx target's declaration, through the plugin manager


def test_an_x86_exported_tensorrt_bundle_passes_on_aarch64_device_facts():
    """The bundle ships ONNX and the Jetson builds the engine: the profile's arch and GPU are what count."""
    m = manifest(fmt="tensorrt", precision="int8", arch="aarch64", host_arch="x86_64", gpu="Orin Nano",
                 runtimes={"onnxruntime": "1.20.0"}, host_flags=["avx2", "avx512_vnni"])
    jetson = facts(arch="aarch64", flags=["asimddp"], versions={"tensorrt": "10.3.0"}, gpus=[ORIN],
                   runtimes=available("tensorrt"))
    report = check_compatibility(m, jetson, strict_int8=True)  # INT8 on the GPU: the host's VNNI is moot
    assert report["passed"] and report["warnings"] == []
    assert report["arch"] == {"bundle": "aarch64", "device": "aarch64"}
    assert report["runtimes"] == {"onnxruntime": {"bundle": "1.20.0", "device": None}}  # the host's gate, not TRT
    # an x86 PC with a GPU is not what the Jetson profile named: portable files, so only warnings
    pc = facts(versions={"tensorrt": "10.3.0"}, gpus=[{"name": "NVIDIA GeForce RTX 4090"}],
               runtimes=available("tensorrt"))
    assert check_compatibility(m, pc)["warnings"] == [
        "exported for aarch64, running on x86_64 (tensorrt files are portable)",
        "the device profile expects GPU 'Orin Nano'; this device has NVIDIA GeForce RTX 4090"]


PLAN_TARGET = """
from edgetl.api import Target
from edgetl.hookspecs import hookimpl

class Plan(Target):
    name = "trtplan"
    requires = ()
    runtime_packages = ("tensorrt",)
    bound_to = ("arch", "gpu", "runtime")  # a serialized engine: one arch, one GPU, one TensorRT minor

    def export(self, model, example, out_dir, spec):
        raise NotImplementedError

    def load(self, files, manifest, options=None):
        raise NotImplementedError

class Blob(Plan):
    name = "blob"
    runtime_packages = ()
    bound_to = Target.bound_to  # says nothing: the contract's default

@hookimpl
def edgetl_targets(register):
    register(Plan())
    register(Blob())
"""


@pytest.fixture
def third_party_targets(tmp_path, monkeypatch):
    from edgetl.plugins import reset_manager

    make_plugin(tmp_path, "plan", PLAN_TARGET)
    activate(monkeypatch, tmp_path, "plan")
    reset_manager()
    yield
    reset_manager()


def test_an_engine_plan_built_for_another_gpu_is_refused(third_party_targets):
    here = facts(arch="x86_64", versions={"tensorrt": "10.3.0"}, gpus=[{"name": "NVIDIA GeForce RTX 4090"}],
                 runtimes=available("trtplan"))
    plan = manifest(fmt="trtplan", gpu="A100", runtimes={"tensorrt": "10.3.1"})
    with pytest.raises(InstallError, match=r"built for GPU 'A100'; this device has NVIDIA GeForce RTX 4090 "
                                           r"\(target 'trtplan' declares its files tied to the GPU\)"):
        check_compatibility(plan, here)
    assert check_compatibility(manifest(fmt="trtplan", gpu="rtx 4090", runtimes={"tensorrt": "10.3.1"}),
                               here)["warnings"] == []
    with pytest.raises(InstallError, match="tensorrt 10.3.0 here, 10.2.0 on the host .*runtime version"):
        check_compatibility(manifest(fmt="trtplan", gpu="RTX 4090", runtimes={"tensorrt": "10.2.0"}), here)
    with pytest.raises(InstallError, match="no GPU found"):
        check_compatibility(plan, facts(versions={"tensorrt": "10.3.0"}, runtimes=available("trtplan")))


def test_a_third_party_target_with_host_bound_files_is_refused_on_an_arch_mismatch(third_party_targets):
    here = facts(arch="aarch64", versions={"tensorrt": "10.3.0"}, gpus=[ORIN], runtimes=available("trtplan", "blob"))
    with pytest.raises(InstallError, match="trtplan model was made for x86_64, this device is aarch64"):
        check_compatibility(manifest(fmt="trtplan", gpu="Orin", runtimes={"tensorrt": "10.3.0"}), here)
    with pytest.raises(InstallError, match="blob model was made for x86_64, this device is aarch64"):
        check_compatibility(manifest(fmt="blob"), here)  # a target that declares nothing is treated as bound


def test_a_fleet_client_without_the_devices_target_plugin_stays_cautious():
    report = facts(runtimes=available("coreml"), versions={"coreml": "8.1"})
    assert check_compatibility(manifest(fmt="coreml", runtimes={"coreml": "7.0"}), report)["warnings"] == [
        "coreml 8.1 here, 7.0 on the host"]
    with pytest.raises(InstallError, match="made for aarch64"):
        check_compatibility(manifest(fmt="coreml", arch="aarch64"), report)


def test_runtime_version_drift_is_reported():
    report = check_compatibility(manifest(runtimes={"onnxruntime": "1.17.3"}), facts())
    assert report["warnings"] == ["onnxruntime 1.20.1 here, 1.17.3 on the host"]


def test_int8_made_for_cpu_features_this_cpu_lacks_warns_or_refuses_when_strict():
    m = manifest(precision="int8", host_flags=["avx2", "avx512_vnni"])
    report = check_compatibility(m, facts(flags=["avx2"]))
    assert "CPU features this device lacks: avx512_vnni" in report["warnings"][0]
    with pytest.raises(InstallError, match="avx512_vnni"):
        check_compatibility(m, facts(flags=["avx2"]), strict_int8=True)
    assert check_compatibility(m, facts(flags=["avx2", "avx512_vnni"]))["warnings"] == []
    assert check_compatibility(manifest(host_flags=["avx512_vnni"]), facts())["warnings"] == []  # fp32: moot


def test_this_machine_describes_itself():
    doc = device_facts()
    assert doc["arch"] and doc["python"] and doc["os"]["system"] == "Linux"
    assert doc["runtimes"]["onnx"]["available"] is True
    assert "onnxruntime" in doc["versions"] and isinstance(doc["cpu"]["flags"], list)
