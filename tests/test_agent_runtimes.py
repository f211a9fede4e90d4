"""The agent installs bundles of another target than ONNX: OpenVINO (FP32; ONNX FP32 is everywhere else).

ONNX INT8 installs the same way (tried by hand); it is left out here because quantizing the tiny model
costs ~10-40 s on this shared 2-core machine, over this suite's time budget.
"""

from __future__ import annotations

import pytest
from agent_support import ThreadAgent, bundles, install, serving


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


@pytest.mark.parametrize(("fmt", "precision"), [("openvino", "fp32")])
def test_agent_installs_checks_and_serves_other_targets(tmp_path, b, fmt, precision):
    from bundle_factory import make_tiny_bundle

    bundle = make_tiny_bundle(b.root / "make", fmt=fmt, precision=precision, key=b.key,
                              out=tmp_path / f"{fmt}-{precision}.edgetl")
    with ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as client:
        install(client, b.v1)
        status = install(client, bundle)
        assert status["status"] == "installed", status["error"]
        report = status["report"]
        assert report["compatibility"]["format"] == fmt and report["compatibility"]["precision"] == precision
        ref = report["reference"]
        assert ref["passed"] and ref["label_agreement"] >= ref["tolerance"]["label_agreement"]
        current = client.get("/v1/info").json()["current"]
        assert current["target"]["format"] == fmt and current["target"]["precision"] == precision
        doc = client.post("/v1/predict", content=b.jpeg("defect"), headers={"Content-Type": "image/jpeg"}).json()
        assert doc["model"] == current["model_version"] and doc["label"] in ("defect", "good")
        assert client.post("/v1/model/rollback").json()["to"] == b.v1_version
        assert serving(client) == b.v1_version
