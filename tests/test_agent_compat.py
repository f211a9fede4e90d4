"""The compatibility stage on its own: what is refused, what is only a warning."""

from __future__ import annotations

import pytest
from bundle_factory import minimal_manifest

from edgetl.device.compat import check_compatibility
from edgetl.device.facts import device_facts
from edgetl.errors import InstallError


def manifest(fmt="onnx", precision="fp32", arch="x86_64", runtimes=None, host_flags=None):
    return minimal_manifest(
        target={"format": fmt, "precision": precision, "files": ["model/model.onnx"]},
        compat={"arch": arch, "runtimes": runtimes or {}, "host_cpu": {"flags": host_flags or []}})


def facts(arch="x86_64", flags=(), versions=None, runtimes=None):
    return {"arch": arch, "cpu": {"flags": list(flags)}, "versions": versions or {"onnxruntime": "1.20.1"},
            "runtimes": runtimes or {"onnx": {"available": True, "missing": [], "extra": "onnxruntime"},
                                     "tensorrt": {"available": False, "missing": ["tensorrt"], "extra": "tensorrt"}}}


def test_a_matching_device_passes_with_no_warnings():
    report = check_compatibility(manifest(runtimes={"onnxruntime": "1.20.0"}), facts())
    assert report["passed"] and report["warnings"] == []
    assert report["runtimes"] == {"onnxruntime": {"bundle": "1.20.0", "device": "1.20.1"}}


def test_a_missing_runtime_or_target_plugin_is_refused_naming_the_extra():
    with pytest.raises(InstallError, match=r"target 'tensorrt' needs tensorrt, missing .*edgetl\[tensorrt\]"):
        check_compatibility(manifest(fmt="tensorrt"), facts())
    with pytest.raises(InstallError, match="needs target 'coreml', which is not installed"):
        check_compatibility(manifest(fmt="coreml"), facts())


def test_arch_mismatch_is_a_warning_for_portable_formats_and_refused_otherwise():
    report = check_compatibility(manifest(arch="aarch64"), facts())
    assert "exported on aarch64, running on x86_64" in report["warnings"][0]
    available = facts(runtimes={"tensorrt": {"available": True, "missing": [], "extra": "tensorrt"}})
    with pytest.raises(InstallError, match="made for aarch64, this device is x86_64"):
        check_compatibility(manifest(fmt="tensorrt", arch="aarch64"), available)


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
