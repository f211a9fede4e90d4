"""Seeded schemathesis against a live agent with the token: no 5xx, no model lost.

The example budget is fixed (``EDGETL_FUZZ_EXAMPLES`` per operation, default 10) and Hypothesis
is derandomised, so a run is repeatable and bounded in time; benchmarks/agent_fuzz.py runs the
same suite with a larger budget. The counts (cases, 5xx, models lost) land in
``FUZZ_COUNTS`` and are printed by the last test.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from agent_support import ThreadAgent, bundles, install
from hypothesis import HealthCheck, given, settings

from edgetl.device.app import openapi_document

EXAMPLES = int(os.environ.get("EDGETL_FUZZ_EXAMPLES", "10"))
FUZZ_COUNTS = {"cases": 0, "5xx": 0, "models_lost": 0}
schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


@pytest.fixture(scope="module")
def live(tmp_path_factory, b):
    root = tmp_path_factory.mktemp("fuzz")
    with ThreadAgent(root / "state", [b.pub], max_bundle_mb=4) as agent:
        with agent.client() as client:
            assert install(client, b.v1)["status"] == "installed"
            assert install(client, b.v2)["status"] == "installed"
        yield agent


# One pytest item per operation, each with its own node id (schemathesis' own parametrize gives all of them
# the same id, which pytest-xdist's per-file scheduling folds into one item: make test would fuzz one route).
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_no_5xx_under_fuzzing(operation, live):
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        check(case, live)

    fuzz()


def check(case, live):
    response = case.call(base_url=live.url, headers={"Authorization": f"Bearer {live.token}"}, timeout=30)
    FUZZ_COUNTS["cases"] += 1
    if response.status_code >= 500:
        FUZZ_COUNTS["5xx"] += 1
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        assert isinstance(body, dict) and set(body) == {"error"} and "\n" not in body["error"], \
            (case.method, case.path, response.status_code, response.headers, response.text[:300])


def test_after_fuzzing_a_model_still_serves(live, b):
    with live.client() as client:
        installer = live.agent.installer
        for install_id in list(installer._threads):  # installs the fuzzer started end first
            installer.wait(install_id, 60)
        info = client.get("/v1/info").json()
        r = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"})
        lost = info["current"] is None or r.status_code != 200
        FUZZ_COUNTS["models_lost"] += int(lost)
        assert not lost, (info["current"], r.text)
        assert info["current"]["model_version"] in (b.v1_version, b.v2_version)
    print(f"\nfuzz: {FUZZ_COUNTS['cases']} cases, {FUZZ_COUNTS['5xx']} 5xx, "
          f"{FUZZ_COUNTS['models_lost']} models lost")
    assert FUZZ_COUNTS["cases"] >= 10 * min(EXAMPLES, 5)
