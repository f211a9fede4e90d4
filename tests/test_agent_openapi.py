"""docs/agent-openapi.json is the agent's contract: it must match what the code serves."""

from __future__ import annotations

import json
from pathlib import Path

from agent_support import ThreadAgent

from edgetl.keys import generate_keypair

ROOT = Path(__file__).resolve().parents[1]
PROSE = {"description", "summary", "title", "version", "operationId"}


def normalise(node):
    """Drop prose (descriptions, titles, version) so only paths, methods and schemas are compared."""
    if isinstance(node, dict):
        return {k: normalise(v) for k, v in sorted(node.items()) if k not in PROSE}
    if isinstance(node, list):
        return [normalise(v) for v in node]
    return node


def test_served_openapi_matches_the_committed_document(tmp_path):
    _, pub = generate_keypair(tmp_path / "k")
    committed = json.loads((ROOT / "docs" / "agent-openapi.json").read_text())
    with ThreadAgent(tmp_path / "state", [pub]) as agent, agent.client() as client:
        served = client.get("/openapi.json").json()
    assert sorted(served["paths"]) == sorted(committed["paths"])
    for path, methods in served["paths"].items():
        assert sorted(methods) == sorted(committed["paths"][path]), path
    assert normalise(served["paths"]) == normalise(committed["paths"]), \
        "regenerate: python -m edgetl.device.app > docs/agent-openapi.json"
    assert normalise(served["components"]) == normalise(committed["components"])


def test_the_document_holds_the_design_table():
    doc = json.loads((ROOT / "docs" / "agent-openapi.json").read_text())
    table = {("get", "/v1/health"), ("get", "/metrics"), ("get", "/v1/info"), ("put", "/v1/model"),
             ("get", "/v1/model/install/{install_id}"), ("post", "/v1/model/rollback"),
             ("patch", "/v1/model/threshold"), ("post", "/v1/predict"), ("get", "/v1/pipeline"),
             ("post", "/v1/pipeline"), ("post", "/v1/pipeline/trigger"), ("get", "/v1/captures"),
             ("get", "/v1/captures/{capture_id}/image")}
    served = {(m, p) for p, methods in doc["paths"].items() for m in methods}
    assert served == table
    for method, path in table - {("get", "/v1/health"), ("get", "/metrics")}:
        assert doc["paths"][path][method].get("security"), (method, path)
    assert set(doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]) == {"image/jpeg", "image/png"}
