"""What the line's page (/ui) costs the agent: CPU with and without a browser watching, at 10 fps.

An ``edgetl agent serve`` subprocess runs the tiny model on a folder replayed as a
10 fps camera of VGA frames (640x480 JPEGs). The agent's CPU time (user +
system, from /proc) is measured over windows of ``--seconds`` in three phases,
interleaved ``--rounds`` times: no browser; one headless Chromium logged in on
/ui (the page polls the live picture at the agent's --ui-fps 10); no browser
again. The page's cost is the difference of the medians, as a share of one
core. The browser's own CPU (it usually runs on a tablet, not the device) is
reported beside it.

    nice -n 10 python benchmarks/ui_cost.py            # table; JSON in benchmarks/results/ui_cost.json

The machine is shared: the agent's CPU *time* is less sensitive to other load
than wall-clock figures, but the frame rate the pipeline reaches is not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
TOKEN = "benchmark-token-for-the-line-page"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU seconds of a process and all its descendants (the browser's renderer, GPU, … processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
        stack += children.get(pid, [])
    return total


def frames(folder: Path, source: Path, n: int) -> Path:
    """``n`` VGA frames (20 distinct JPEGs, the rest links to them) made from the tiny set's images."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    images = sorted(source.rglob("*.png"))[:20]
    rng = np.random.default_rng(0)
    for i, path in enumerate(images):
        big = cv2.resize(cv2.imread(str(path)), (640, 480), interpolation=cv2.INTER_LINEAR)
        big = np.clip(big.astype(np.int16) + rng.integers(-8, 9, big.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"base{i:02d}.jpg"), big)
    for i in range(n):
        (folder / f"f{i:05d}.jpg").symlink_to(folder / f"base{i % len(images):02d}.jpg")
    return folder


def browser(url: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    profile = tempfile.mkdtemp(prefix="edgetl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    service = Service(shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.get(url + "/ui/login")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.ID, "login").click()
    deadline = time.monotonic() + 30
    while not driver.find_element(By.ID, "live").get_attribute("data-frame-id"):
        if time.monotonic() > deadline:
            raise RuntimeError("the page shows no frame")
        time.sleep(0.2)
    return driver, service.process.pid, profile


def draw_cost(source: Path, repeats: int = 200) -> dict[str, float]:
    """Median milliseconds to draw one live picture (:meth:`LiveFeed.draw`, 640 px wide JPEG) of a VGA
    frame, without and with a model-sized anomaly map, in this process (one thread)."""
    import cv2
    import numpy as np

    from edgetl.device.live import FrameRecord, LiveFeed

    image = cv2.imread(str(sorted(source.glob("base*.jpg"))[0]))
    # a map as an anomaly model gives it: smooth, at the network's resolution (56x56), one hot spot
    yy, xx = np.mgrid[0:56, 0:56]
    amap = np.exp(-((yy - 20) ** 2 + (xx - 30) ** 2) / 60.0).astype(np.float32)
    doc = {"label": "good", "scores": {"good": 0.9, "anomaly": 0.1}, "anomaly_score": 0.1, "threshold": 0.5,
           "latency_ms": 1.0, "model": "m"}
    feed = LiveFeed()
    out = {}
    for name, m in (("plain", None), ("heat map", amap)):
        record = FrameRecord(1, 0, "cam", time.time(), doc, False, 0.1, image, m)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            feed.draw(record, 640)
            times.append((time.perf_counter() - start) * 1000)
        out[name] = statistics.median(times)
    return out


def live_requests(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("edgetl_requests_total{") and 'route="/ui/api/live.jpg"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fps", type=float, default=10.0)
    args = parser.parse_args()

    import httpx
    from agent_support import Bundles, install, resign
    from net_helpers import free_port

    root = Path(tempfile.mkdtemp(prefix="edgetl-ui-cost-"))
    b = Bundles(root / "bundles")
    bundle = resign(b.v1, root / "line.edgetl", b.key, edit_manifest=lambda m: m.update(threshold=0.5, positive="defect"))
    total_s = args.rounds * 3 * (args.seconds + 8) + 60
    source = frames(root / "data" / "line", b.data, int(total_s * args.fps))
    (root / "token").write_text(TOKEN + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "agent.log", "wb")
    agent = subprocess.Popen([sys.executable, "-m", "edgetl", "agent", "serve", "--state-dir", str(root / "data" / "state"),
                              "--port", str(port), "--token-file", str(root / "token"), "--trust", str(b.pub),
                              "--ui-fps", str(args.fps), "--data-root", str(root / "data"), "--log-level", "warning"],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT}/plugins"))
    rows: dict[str, list[dict]] = {"no page": [], "page open": []}
    driver = None
    try:
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            try:
                if client.get("/v1/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError(f"agent not ready: see {log.name}")
            time.sleep(0.2)
        assert install(client, bundle)["status"] == "installed"
        client.post("/v1/pipeline", json={"source": str(source), "source_options": {"fps": args.fps}}).raise_for_status()
        time.sleep(3)

        def window(phase: str, browser_pid: int | None) -> None:
            frames0 = client.get("/v1/pipeline").json()["status"]["frames"]
            live0 = live_requests(client)
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            b0 = tree_cpu_seconds(browser_pid) if browser_pid else 0.0
            load0 = os.getloadavg()[0]
            time.sleep(args.seconds)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(agent.pid) - cpu0
            status = client.get("/v1/pipeline").json()["status"]
            rows[phase].append({
                "agent_cpu_pct": 100 * cpu / wall, "wall_s": wall,
                "pipeline_fps": (status["frames"] - frames0) / wall,
                "pictures_per_s": (live_requests(client) - live0) / wall,
                "browser_cpu_pct": 100 * (tree_cpu_seconds(browser_pid) - b0) / wall if browser_pid else None,
                "load_avg_1m": load0})
            print(f"{phase:10} agent {rows[phase][-1]['agent_cpu_pct']:5.1f} % CPU, pipeline "
                  f"{rows[phase][-1]['pipeline_fps']:4.1f} fps, live pictures {rows[phase][-1]['pictures_per_s']:4.1f}/s, "
                  f"load {load0:.1f}", file=sys.stderr)

        for _ in range(args.rounds):
            window("no page", None)
            driver, driver_pid, profile = browser(url)
            time.sleep(2)
            window("page open", driver_pid)
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
            driver = None
            time.sleep(2)
        window("no page", None)
    finally:
        if driver is not None:
            driver.quit()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
        log.close()

    def med(phase: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[phase])

    cost = med("page open", "agent_cpu_pct") - med("no page", "agent_cpu_pct")
    draw = draw_cost(source)
    print("\n| phase | windows | agent CPU (% of one core) | pipeline fps | live pictures/s | browser CPU | load avg |")
    print("|---|---|---|---|---|---|---|")
    for phase in rows:
        browser_cpu = med(phase, "browser_cpu_pct") if phase == "page open" else None
        print(f"| {phase} | {len(rows[phase])} | {med(phase, 'agent_cpu_pct'):.1f} | {med(phase, 'pipeline_fps'):.1f} | "
              f"{med(phase, 'pictures_per_s'):.1f} | {'–' if browser_cpu is None else f'{browser_cpu:.1f} %'} | "
              f"{med(phase, 'load_avg_1m'):.1f} |")
    print(f"\nthe page costs the agent {cost:+.1f} % of one core at {args.fps:g} fps "
          f"({os.cpu_count()} CPUs here, shared; the no-page windows alone spread "
          f"{min(r['agent_cpu_pct'] for r in rows['no page']):.1f}–{max(r['agent_cpu_pct'] for r in rows['no page']):.1f} %)")
    for name, ms in draw.items():
        print(f"one live picture ({name}, VGA frame -> 640 px JPEG): {ms:.2f} ms median; at {args.fps:g} pictures/s "
              f"{ms * args.fps / 10:.1f} % of one core")
    out = ROOT / "benchmarks" / "results" / "ui_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"fps": args.fps, "seconds": args.seconds, "rounds": args.rounds, "cpus": os.cpu_count(),
                               "page_cost_pct_of_one_core": cost, "draw_ms": draw,
                               "windows": rows}, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
