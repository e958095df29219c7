"""Screenshot a finished study's runs table in MLflow's UI, in real headless Chromium.

    python docs/mlflow_screenshot.py --tracking-uri sqlite:///$PWD/mlflow.db --experiment NAME \
        --output docs/mlflow_runs.png

Starts ``mlflow ui`` (one worker) on a free localhost port and Chromium with a fresh profile,
opens the experiment's runs table as the README tells a reader to (machine-learning view,
children sorted by ``metrics.ratio``), shows the searched parameters and the per-family
mAP@100 columns, and saves a PNG. Chromium is driven over its DevTools protocol (aiohttp's
websocket client, which Ray already installs); nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from study.console import mlflow_ui_url
from trainables.languages import FAMILIES

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# The columns a reader compares: the searched values, multilingual mAP@100 overall and per family, bias.
COLUMNS = (["params.`ratio`", "params.`seed`", "metrics.`multi`"] + [f"metrics.`multi/{f}`" for f in FAMILIES]
           + ["metrics.`bias`"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def runs_url(base: str, experiment_id: str) -> str:
    """The runs table the study prints: machine-learning view, children only, sorted by ratio."""
    return mlflow_ui_url(experiment_id, base)


class Page:
    """A minimal DevTools-protocol client for one page."""

    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive()).data)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_js(self, expression: str, timeout_s: float = 60.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.5)
        raise TimeoutError(expression)


SHOW_COLUMNS_JS = """
(() => {
  const key = Object.keys(localStorage).find(k => k.includes('ExperimentPage') && k.endsWith('ReactComponentState'));
  if (!key) return false;
  const state = JSON.parse(localStorage.getItem(key));
  state.selectedColumns = %s;
  localStorage.setItem(key, JSON.stringify(state));
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');  // the chat panel would take a quarter
  return true;
})()
"""


async def screenshot(debug_port: int, url: str, output: Path, width: int, height: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list", timeout=10).read())
        target = next(t for t in targets if t.get("type") == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            page = Page(ws)
            await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                            mobile=False)
            await page.call("Page.navigate", url=url)
            await page.wait_js("document.querySelectorAll('[role=row]').length > 2")
            # the UI keeps its column choice in local storage: show the columns a reader compares
            await page.wait_js(SHOW_COLUMNS_JS % json.dumps(COLUMNS))
            await page.call("Page.reload")
            await page.wait_js("document.body.innerText.includes('multi/sinitic')")
            await asyncio.sleep(3)  # let the grid finish its layout
            shot = await page.call("Page.captureScreenshot", format="png")
    output.write_bytes(base64.b64decode(shot["data"]))


def experiment_id_of(base: str, name: str) -> str:
    query = urllib.parse.urlencode({"experiment_name": name})
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=30) as r:
        return json.loads(r.read())["experiment"]["experiment_id"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--output", default="docs/mlflow_runs.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    p.add_argument("--size", default="1900x900", help="window WIDTHxHEIGHT in pixels")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    ui_port, debug_port = free_port(), free_port()
    base = f"http://127.0.0.1:{ui_port}"
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri, "--host",
                           "127.0.0.1", "--port", str(ui_port), "--workers", "1"], start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    browser = None
    try:
        wait_for(f"{base}/health")
        url = runs_url(base, experiment_id_of(base, args.experiment))
        browser = subprocess.Popen([args.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                    f"--remote-debugging-port={debug_port}", f"--window-size={width},{height}",
                                    "about:blank"], start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"http://127.0.0.1:{debug_port}/json/version")
        asyncio.run(screenshot(debug_port, url, Path(args.output), width, height))
        print(f"{args.output}: {url}")
        return 0
    finally:
        for proc in (browser, ui):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
