"""Screenshots of MLflow's run page and compare view for README and docs/tracking.md.

    python docs/screenshots.py                      # train two smoke runs, then photograph them
    python docs/screenshots.py --tracking-uri sqlite:///mlflow.db --runs RUN_ID RUN_ID

Without `--runs` it prepares 16x16 built-in crops and trains two small runs (Row LSTM and
PixelCNN, a sample grid every epoch) with `pixelrnn train` into a scratch folder. It then serves
the store with `mlflow server` on 127.0.0.1 (unless the URI is already a server) and renders
the pages with headless Chromium (Debian: `apt-get install chromium`), writing
`mlflow_run.png` (the latest run's page) and `mlflow_compare.png` into `--out`.
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

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAYERS = ("row_lstm", "pixelcnn")
WINDOW = "1500,1300"


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


def screenshot(chromium: str, url: str, path: Path) -> None:
    """Render `url` once the page has settled. Every host but 127.0.0.1 resolves to nothing:
    a request that hangs on an unreachable host would stop the virtual clock for good."""
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={WINDOW}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         "--virtual-time-budget=20000", f"--screenshot={path}", url],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    print(f"wrote {path}  ({url})")


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
        try:
            runs = run_infos(base, args.runs) if args.runs else latest_runs(base)
            experiment, latest = runs[-1]["experiment_id"], runs[-1]["run_id"]
            page = f"{base}/#/experiments/{experiment}/runs/{latest}"
            screenshot(chromium, page, args.out / "mlflow_run.png")
            query = urllib.parse.urlencode({
                "runs": json.dumps([run["run_id"] for run in runs]),
                "experiments": json.dumps([experiment]),
            })  # fmt: skip
            screenshot(chromium, f"{base}/#/compare-runs?{query}", args.out / "mlflow_compare.png")
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
