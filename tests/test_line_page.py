"""The line's page (/ui) in a real headless Chromium against a real agent replaying a folder.

One agent, one browser, one walk through what an operator and an engineer do:
log in, watch the live view and the counters move, open a reject, preview and
apply a threshold, mark a missed defect; then the refusals (no login, viewer,
cross-site POST), a restart that keeps the mark, and ``edgetl collect`` into a
folder that ``edgetl data inspect`` accepts. The screenshot in docs/deploy.md
(docs/figures/ui.png) is taken here: ``EDGETL_UPDATE_FIGURES=1`` writes it into
docs/figures (otherwise into the test's folder, so a test run leaves the
checkout as it was).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from agent_support import ThreadAgent, install
from anomaly_bundle_support import make_anomaly_bundle, spot_folder
from click.testing import CliRunner
from net_helpers import free_port, wait_for
from system_support import require_program

from edgetl.cli import cli
from edgetl.device.ui import UiSettings

ROOT = Path(__file__).resolve().parents[1]
ADMIN, VIEWER = "s3cret-token-for-tests", "viewer-token-for-the-line-tests"
# frame metadata that a careless page would run: the folder every frame comes from is named like markup
INJECTED = "<img src=x onerror=document.title='pwned'>"


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """(anomaly bundle, the public key that signed it)."""
    from edgetl.keys import generate_keypair

    root = tmp_path_factory.mktemp("line-bundle")
    key, pub = generate_keypair(root / "release")
    return make_anomaly_bundle(root, key), pub


@pytest.fixture(scope="module")
def browser():
    require_program("chromium", "chromium")
    driver_path = require_program("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edgetl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# mean |blue - red| of the live picture below its banner: ~0 for a grey frame, large under the JET heat map
HEAT_TINT = """
const img = document.getElementById('live');
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const data = ctx.getImageData(0, 60, canvas.width, canvas.height - 70).data;
let sum = 0;
for (let i = 0; i < data.length; i += 4) sum += Math.abs(data[i + 2] - data[i]);
return sum / (data.length / 4);
"""




def line_folder(root: Path, n: int = 240) -> Path:
    """``n`` frames, every third with a bright spot, in a folder whose name is markup."""
    spot_folder(root / "line" / INJECTED, n)
    return root / "line"


def login(driver, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(url + "/ui/")
    wait_for(lambda: driver.current_url.endswith("/ui/login"), what="the redirect to the login page")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()
    wait_for(lambda: driver.current_url.endswith("/ui/"), what="the page after login")
    wait_for(lambda: driver.find_element(By.ID, "role").text, what="the session")


def text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def counter(driver, name: str) -> int:
    """One counter's value, read in one script call (the page replaces the rows every second)."""
    value = driver.execute_script(
        "for (const tr of document.querySelectorAll('#counters tr'))"
        "  if (tr.cells[0].textContent === arguments[0]) return tr.cells[1].textContent;"
        "return null;", name)
    assert value is not None, f"no counter {name}"
    return int(value)


def evil_site(agent_url: str) -> tuple[ThreadingHTTPServer, str]:
    """Another origin's page that POSTs a threshold change to the agent on load (a classic CSRF)."""
    page = f"""<html><body><form id=f method=post enctype=text/plain action="{agent_url}/ui/api/threshold">
<input name='{{"threshold": 0.01, "x": "' value='"}}'></form><script>document.getElementById('f').submit()</script>
</body></html>""".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def test_the_line_page_end_to_end(tmp_path, signed, browser):
    from selenium.webdriver.common.by import By

    bundle, pub = signed
    source = line_folder(tmp_path)
    state = tmp_path / "state"
    # every frame is a close call here (margin 1), sampled at most every 0.5 s: unlabelled captures
    ui = {"ui": UiSettings(viewer_token=VIEWER, capture_margin=1.0, capture_every_s=0.5, live_fps=5)}
    with ThreadAgent(state, [pub], app_kwargs=ui) as agent, agent.client() as client:
        # before any login: only the login page (and its stylesheet) answers
        for path in ("/ui/", "/ui/static/app.js", "/ui/static/app.css", "/ui/static/index.html", "/ui/api/state",
                     "/ui/api/live.jpg", "/ui/api/rejects", "/ui/api/captures", "/ui/api/frames/1.jpg",
                     "/ui/api/session", "/ui/api/preview?threshold=0.5"):
            response = httpx.get(agent.url + path)
            assert response.status_code in (303, 401), path
            assert response.status_code == 401 or response.headers["location"] == "/ui/login", path
        assert httpx.post(agent.url + "/ui/api/threshold", json={"threshold": 0.2}).status_code in (401, 403)
        login_page = httpx.get(agent.url + "/ui/login")
        assert login_page.status_code == 200 and "token" in login_page.text
        assert "frame-ancestors 'none'" in login_page.headers["content-security-policy"]

        assert install(client, bundle)["status"] == "installed"
        assert client.post("/v1/pipeline", json={"source": str(source), "source_options": {"fps": 12}}).status_code == 200

        login(browser, agent.url, ADMIN)
        cookie = browser.get_cookie("edgetl_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert browser.execute_script("return document.cookie") == ""  # no script can read the session
        assert text(browser, "role") == "admin"

        # the live view updates with the verdict drawn on each frame
        first = wait_for(lambda: browser.find_element(By.ID, "live").get_attribute("data-frame-id"), what="a frame")
        wait_for(lambda: browser.find_element(By.ID, "live").get_attribute("data-frame-id") != first,
                 what="the live view to move on")
        assert browser.execute_script("return document.getElementById('live').naturalWidth") == 320  # downscaled
        # the heat map is blended over the grey frame: colour where the camera saw none
        tint = browser.execute_script(HEAT_TINT)
        assert tint > 8, tint
        inspected = counter(browser, "inspected")
        wait_for(lambda: counter(browser, "inspected") > inspected, what="the counters to move")
        assert counter(browser, "rejected") > 0
        caption = wait_for(lambda: INJECTED in text(browser, "live-caption") and text(browser, "live-caption"),
                           what="the frame's source in the caption")
        assert "score" in caption and "threshold 0.500" in caption and "anomaly" in caption + text(browser, "card")
        assert browser.title == "edgetl line"  # the markup in the frame's name stayed text
        assert not browser.find_elements(By.CSS_SELECTOR, "#live-caption img, #captures img")
        card = text(browser, "card")
        assert "model_version" in card and "reference check here\npassed" in card.replace(" passed", "\npassed")

        # a reject opens full size with its overlay
        figure = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#rejects figure"), what="a reject")[0]
        figure.click()
        wait_for(lambda: browser.execute_script(
            "const i = document.getElementById('viewer-image'); return i.complete && i.naturalWidth"),
            what="the full-size reject")
        assert browser.find_element(By.ID, "viewer").get_attribute("open") is not None
        assert INJECTED in text(browser, "viewer-caption")
        browser.find_element(By.ID, "viewer-close").click()

        # the threshold: preview how many frames would flip, then apply
        browser.execute_script("const v = document.getElementById('threshold-value'); v.value = '0.999';"
                               "v.dispatchEvent(new Event('input'));")
        browser.find_element(By.ID, "threshold-preview").click()
        effect = wait_for(lambda: "would flip" in text(browser, "threshold-effect") and text(browser, "threshold-effect"),
                          what="the preview")
        flips, n = (int(x) for x in re.search(r"(\d+) of the last (\d+) frames would flip", effect).groups())
        assert 0 < flips <= n  # defects at 0.5 are accepted at 0.999
        browser.find_element(By.ID, "threshold-apply").click()
        wait_for(lambda: "applied" in text(browser, "threshold-effect"), what="the threshold applied")
        assert client.get("/v1/info").json()["serving"]["threshold"] == pytest.approx(0.999)

        # the frame on screen is a missed defect: mark it
        browser.find_element(By.ID, "mark-missed-defect").click()
        marked = wait_for(lambda: "marked" in text(browser, "mark-result") and text(browser, "mark-result"),
                          what="the mark")
        assert "missed_defect (anomaly)" in marked
        wait_for(lambda: "missed_defect" in text(browser, "captures"), what="the capture list")
        update_figure = bool(os.environ.get("EDGETL_UPDATE_FIGURES"))
        if update_figure:
            time.sleep(1.2)  # one more state poll so the figure shows settled counters
        browser.execute_script("window.scrollTo(0, 0)")
        shot = (ROOT / "docs" / "figures" if update_figure else tmp_path) / "ui.png"
        browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

        # a cross-site page in the same (logged-in) browser cannot change anything
        server, evil = evil_site(agent.url)
        try:
            browser.get(evil)
            # its form was sent: the browser shows the agent's answer to it (sent without the
            # SameSite=Strict cookie and without the CSRF token, so refused)
            wait_for(lambda: browser.current_url.startswith(agent.url + "/ui/api/threshold"),
                     what="the cross-site form's POST")
        finally:
            server.shutdown()
            server.server_close()
        assert client.get("/v1/info").json()["serving"]["threshold"] == pytest.approx(0.999)
        # nor can a script without the CSRF token, even with the cookie
        jar = {"edgetl_session": cookie["value"]}
        assert httpx.post(agent.url + "/ui/api/threshold", json={"threshold": 0.2}, cookies=jar).status_code == 403

        # the viewer sees the page and changes nothing
        login(browser, agent.url, VIEWER)
        assert text(browser, "role") == "viewer"
        assert not browser.find_element(By.ID, "threshold-apply").is_displayed()
        viewer = {"edgetl_session": browser.get_cookie("edgetl_session")["value"]}
        csrf = httpx.get(agent.url + "/ui/api/session", cookies=viewer).json()["csrf"]
        refused = httpx.post(agent.url + "/ui/api/threshold", json={"threshold": 0.2}, cookies=viewer,
                             headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 403 and "viewer" in refused.json()["error"]
        assert client.get("/v1/info").json()["serving"]["threshold"] == pytest.approx(0.999)
        assert client.post("/v1/pipeline", json={"action": "stop"}).json()["running"] is False

    # after a restart the mark is still there, on the page and over the API
    with ThreadAgent(state, [pub], app_kwargs=ui) as agent, agent.client() as client:
        captures = client.get("/v1/captures").json()["captures"]
        assert [(c["mark"], c["label"]) for c in captures if c["mark"]] == [("missed_defect", "anomaly")]
        sampled = [c for c in captures if not c["mark"]]
        assert sampled and all(c["reason"] == "low_margin" and c["label"] is None for c in sampled)
        login(browser, agent.url, ADMIN)
        wait_for(lambda: "missed_defect" in text(browser, "captures"), what="the mark after a restart")

        # edgetl collect: into the layout train and data inspect read
        token_file = tmp_path / "token"
        token_file.write_text(ADMIN + "\n")
        out = tmp_path / "feedback"
        result = CliRunner().invoke(cli, ["collect", agent.url, "--out", str(out), "--token-file", str(token_file),
                                          "--json"])
        assert result.exit_code == 0, result.output
        collected = json.loads(result.output)
        assert collected["labelled"] == {"anomaly": 1} and collected["unlabelled"] == len(sampled)
    images = list((out / "train" / "anomaly").glob("*.png"))
    assert len(images) == 1
    import cv2

    frame = cv2.imread(str(images[0]))
    assert any(np.array_equal(frame, cv2.imread(str(p))) for p in (source / INJECTED).glob("*.png"))
    lines = [json.loads(line) for line in (out / "captures.jsonl").read_text().splitlines()]
    marked = [line for line in lines if line["mark"]]
    assert len(marked) == 1 and marked[0]["file"] == f"train/anomaly/{images[0].name}"
    assert len(list((out / "unlabelled").glob("*.png"))) == len(sampled)
    inspected = CliRunner().invoke(cli, ["data", "inspect", str(out), "--json"])
    assert inspected.exit_code == 0, inspected.output
    assert json.loads(inspected.output)["splits"]["train"]["counts"] == {"anomaly": 1}


def test_a_class_name_with_markup_is_shown_as_text(tmp_path, browser):
    """A bundle whose defect class is named like a script: the card, the caption and the class picker
    show the name; nothing runs and no element is made of it."""
    from selenium.webdriver.common.by import By

    from edgetl.keys import generate_keypair

    key, pub = generate_keypair(tmp_path / "release")
    label = "<script>document.title='pwned'</script><b>bad</b>"
    bundle = make_anomaly_bundle(tmp_path / "bundle", key, name="markup", labels=("good", label))
    source = spot_folder(tmp_path / "line", 200, every=1)  # every frame is a "<script>…" reject
    with ThreadAgent(tmp_path / "state", [pub]) as agent, agent.client() as client:
        assert install(client, bundle)["status"] == "installed"
        assert client.post("/v1/pipeline", json={"source": str(source), "source_options": {"fps": 10}}).status_code == 200
        login(browser, agent.url, ADMIN)
        wait_for(lambda: label in text(browser, "live-caption"), what="the label in the caption")
        assert label in text(browser, "card")
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#rejects figure"), what="a reject")
        options = browser.execute_script("return [...document.querySelectorAll('#mark-class option')]"
                                         ".map(o => o.textContent)")
        assert options == ["good", label]
        assert browser.title == "edgetl line"
        assert not browser.find_elements(By.CSS_SELECTOR, "main b, main script, #rejects b, #captures b")
        # marked as a missed defect, the frame is kept but unlabelled: the class cannot be a folder name
        browser.find_element(By.ID, "mark-missed-defect").click()
        wait_for(lambda: "unlabelled" in text(browser, "mark-result"), what="the mark")
        client.post("/v1/pipeline", json={"action": "stop"})
