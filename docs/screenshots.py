"""Screenshots of MLflow's run page and compare view for README and docs/tracking.md.

    python docs/screenshots.py                      # train two smoke runs, then photograph them
    python docs/screenshots.py --tracking-uri sqlite:///mlflow.db --runs RUN_ID RUN_ID

Without `--runs` it prepares 16x16 built-in crops and trains two small runs (Row LSTM and
PixelCNN, a sample grid every epoch) with `pixelrnn train` into a scratch folder. It then serves
the store with `mlflow server` on 127.0.0.1 (unless the URI is already a server) and renders
the pages with headless Chromium (Debian: `apt-get install chromium`), writing
`mlflow_run.png` (the latest run's page) and `mlflow_compare.png` into `--out`. Chromium is
driven over its DevTools protocol, so the compare view's chart can be set to `val/bits_per_dim`
the way a person sets it (MLflow's default is the first metric the run logged, a system metric).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from devtools import Chromium  # docs/devtools.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAYERS = ("row_lstm", "pixelcnn")
WINDOW = (1500, 1300)
COMPARED_METRIC = "val/bits_per_dim"


def pixelrnn(*args: str) -> None:
    subprocess.run([str(BIN / "pixelrnn"), *args], check=True, cwd=ROOT)


def train_runs(work: Path) -> str:
    """Two small runs in `work`; returns their SQLite tracking URI."""
    data = work / "builtin-16"
    pixelrnn("prepare", "builtin", "--output", str(data), "--size", "16",
             "--train-images", "256", "--val-images", "64", "--test-images", "16")  # fmt: skip
    uri = f"sqlite:///{work}/mlflow.db"
    for layer in LAYERS:
        overrides = {
            "model.layer": layer, "data.path": str(data), "data.crop_size": 0,
            "train.epochs": 3, "train.max_steps_per_epoch": 8, "train.run_name": layer,
            "train.storage_path": str(work / "runs"), "tracking.tracking_uri": uri,
            "tracking.experiment_name": "screenshots", "tracking.sample_every_epochs": 1,
            "tracking.num_samples": 16, "tracking.registered_model_name": "pixelrnn-smoke",
        }  # fmt: skip
        sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
        pixelrnn("train", "--config", "experiments/smoke.yaml", *sets)
    return uri


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(uri: str, work: Path) -> tuple[str, subprocess.Popen | None]:
    """The base URL of a server for `uri` (started here unless `uri` is one)."""
    if uri.startswith("http"):
        return uri.rstrip("/"), None
    port = free_port()
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", uri]  # fmt: skip
    log = open(work / "server.log", "wb")  # noqa: SIM115 (the server outlives this function)
    server = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2).close()
            return base, server
        except OSError:
            time.sleep(0.5)
    server.kill()
    server.wait()
    raise SystemExit(f"mlflow server did not start; see {work / 'server.log'}")


def latest_runs(base: str) -> list[dict]:
    """The two most recent runs of the store, oldest first."""
    body = json.dumps({"max_results": 1000}).encode()
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as answer:
        ids = [e["experiment_id"] for e in json.loads(answer.read())["experiments"]]
    body = json.dumps({"experiment_ids": ids, "max_results": 2,
                       "order_by": ["attributes.start_time DESC"]}).encode()  # fmt: skip
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as answer:
        return [run["info"] for run in json.loads(answer.read())["runs"]][::-1]


def run_infos(base: str, run_ids: list[str]) -> list[dict]:
    infos = []
    for run_id in run_ids:
        url = f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}"
        with urllib.request.urlopen(url, timeout=60) as answer:
            infos.append(json.loads(answer.read())["run"]["info"])
    return infos


# The compare view's "Metrics:" select of its parallel-coordinates chart, and the chart itself.
METRICS_SELECT = (
    "[...document.querySelectorAll('div')].find(e => e.previousElementSibling"
    " && e.previousElementSibling.textContent === 'Metrics:')"
)
CHART_LABELS = "[...document.querySelectorAll('.js-plotly-plot text')].map(t => t.textContent)"


def photograph_run(browser: Chromium, url: str, run_name: str, path: Path) -> None:
    browser.open(url)
    loaded = f"document.body.innerText.includes({json.dumps(run_name)})"
    browser.wait_for(f"{loaded} && document.body.innerText.includes('Parameters')", "the run page")
    close_assistant(browser)
    browser.screenshot(path)


def photograph_compare(browser: Chromium, url: str, path: Path) -> None:
    """The compare view with its chart on `COMPARED_METRIC`: the metric already chosen is
    removed, then the select is clicked, the metric typed and Enter pressed."""
    browser.open(url)
    browser.wait_for(f"{METRICS_SELECT} && document.querySelector('.js-plotly-plot')",
                     "the compare view's chart")  # fmt: skip
    close_assistant(browser)
    remove = f"{METRICS_SELECT}.querySelectorAll('[class*=select-selection-item-remove]')"
    browser.evaluate(f"{remove}.forEach(e => e.click())")
    x, y = browser.evaluate(
        f"(r => [r.x + r.width / 2, r.y + r.height / 2])({METRICS_SELECT}.getBoundingClientRect())"
    )
    browser.click(x, y)
    browser.call("Input.insertText", text=COMPARED_METRIC)
    browser.wait_for(f"[...document.querySelectorAll('[class*=select-item-option-content]')]"
                     f".some(e => e.textContent === {json.dumps(COMPARED_METRIC)})",
                     f"{COMPARED_METRIC} among the metrics", timeout_s=30)  # fmt: skip
    browser.press("Enter", 13)
    browser.press("Escape", 27)
    browser.evaluate("document.activeElement.blur()")
    browser.wait_for(f"{CHART_LABELS}.includes({json.dumps(COMPARED_METRIC)})",
                     f"the chart on {COMPARED_METRIC}", timeout_s=30)  # fmt: skip
    chosen = browser.evaluate(
        f"[...{METRICS_SELECT}.querySelectorAll('[class*=select-selection-item-content]')]"
        ".map(e => e.textContent)"
    )
    if chosen != [COMPARED_METRIC]:
        raise RuntimeError(f"the compare view's metrics are {chosen}, not [{COMPARED_METRIC!r}]")
    browser.screenshot(path)


def close_assistant(browser: Chromium) -> None:
    """Close MLflow's assistant panel (it takes a quarter of the window) when it is open."""
    browser.evaluate("document.querySelector('button[aria-label=Close]')?.click()")
    time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", help="existing store or server (default: train two runs)")
    parser.add_argument("--runs", nargs=2, metavar="ID", help="the runs to show (default: latest)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
        work = Path(tmp)
        uri = args.tracking_uri or train_runs(work)
        base, server = serve(uri, work)
        browser = None
        try:
            runs = run_infos(base, args.runs) if args.runs else latest_runs(base)
            experiment, latest = runs[-1]["experiment_id"], runs[-1]["run_id"]
            browser = Chromium(chromium, WINDOW)
            page = f"{base}/#/experiments/{experiment}/runs/{latest}"
            photograph_run(browser, page, runs[-1]["run_name"], args.out / "mlflow_run.png")
            query = urllib.parse.urlencode({
                "runs": json.dumps([run["run_id"] for run in runs]),
                "experiments": json.dumps([experiment]),
            })  # fmt: skip
            compare = f"{base}/#/compare-runs?{query}"
            photograph_compare(browser, compare, args.out / "mlflow_compare.png")
        finally:
            if browser is not None:
                browser.close()
            if server is not None:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
