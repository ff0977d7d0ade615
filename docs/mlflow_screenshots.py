"""Screenshots of the MLflow UI over a finished study, as a user sees it, for README.md and docs/results.md.

Starts `mlflow server` on 127.0.0.1 over the study's own store, opens the experiment's run list (trials
nested under the study's parent run), a comparison of the parent's trials (parallel coordinates of
the searched parameters against `fid`) and, for a scaling study, MLflow's own chart of one metric's curves
over the arms' seeded runs at one training-set size (`--curves memorization --images 22`) in headless
Chromium, saves the PNGs, and stops the server by its PID. Chromium is driven by Playwright (`pip install -e ".[screenshots]"`; no browser download: it runs Debian's
`chromium`, which the script installs when missing, as root from the package mirror).

    python docs/mlflow_screenshots.py studies/demo --out docs/img
    python docs/mlflow_screenshots.py studies/scaling --metric fid_test --curves memorization --images 22 --out docs/img
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    print("installing Debian's chromium package ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                   stdout=subprocess.DEVNULL)
    return shutil.which("chromium")


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} did not answer within {timeout:.0f} s")


def _close_assistant(page) -> None:
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()


def _pick(page, index: int, options: list[str]) -> None:
    """Choose options in one of the comparison page's searchable multi-selects (0: parameters, 1: metrics)."""
    box = page.locator("input.du-bois-light-select-selection-search-input").nth(index)
    for option in options:
        box.click()
        page.keyboard.type(option)
        page.wait_for_timeout(300)
        page.keyboard.press("Enter")  # the first match: options are sorted, so an exact name comes first
    page.keyboard.press("Escape")


def _run_list(page, url: str, path: Path, columns: list[str]) -> None:
    """The experiment's runs table, the study's parent run expanded to show its trials, with our metrics
    (`columns` are toggled: Dataset, Source and Models are on by default and turned off)."""
    page.goto(url)
    page.get_by_text("Run Name", exact=True).wait_for(timeout=60000)
    page.wait_for_timeout(2000)
    _close_assistant(page)
    page.get_by_role("button", name="Toggle sidebar").click()
    page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()  # expand the parent run
    page.get_by_role("button", name="Columns", exact=True).click()
    for column in columns:
        item = page.get_by_role("dialog").get_by_text(column, exact=True)
        if item.count():
            item.first.click()
    page.keyboard.press("Escape")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(path))


def _comparison(page, url: str, path: Path, params: list[str], metric: str) -> None:
    """Parallel coordinates of the searched parameters against the search metric, over the searched trials."""
    page.goto(url)
    page.get_by_text("Parallel Coordinates Plot", exact=True).wait_for(timeout=60000)
    page.wait_for_timeout(2000)
    _close_assistant(page)
    page.get_by_role("button", name="Clear All").click()
    _pick(page, 0, params)
    _pick(page, 1, [metric])
    page.wait_for_timeout(2000)
    page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": 1700, "height": 620})


def _curves(page, url: str, path: Path) -> None:
    """MLflow's metric page: one metric against step (images seen) for the chosen runs, one line per run."""
    page.goto(url)
    page.locator("canvas, svg.main-svg").first.wait_for(timeout=60000)
    page.wait_for_timeout(3000)
    _close_assistant(page)
    page.screenshot(path=str(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a finished study's output folder (holds mlflow.db and mlartifacts/)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "img")
    parser.add_argument("--prefix", default=None, help="file name prefix; default: the study folder's name")
    parser.add_argument("--metric", default="fid", help="the metric shown against the parameters")
    parser.add_argument("--curves", default=None, help="also chart this metric's curves over the arms' seeded runs")
    parser.add_argument("--images", type=int, default=None, help="with --curves: the training-set size whose runs are charted")
    args = parser.parse_args(argv)
    study = args.study.resolve()
    state = json.loads((study / "study_state.json").read_text())
    prefix = args.prefix or study.name
    args.out.mkdir(parents=True, exist_ok=True)
    chromium = _chromium()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{study / 'mlflow.db'}", "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_healthy(url, server)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=url)
        parent = client.get_run(state["parent_run_id"])
        experiment = parent.info.experiment_id
        children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=500)
        scored = [c for c in children if args.metric in c.data.metrics]
        searched = [c.info.run_id for c in scored if c.data.tags.get("phase") == "search"] or [c.info.run_id for c in scored]
        shots = {
            f"{prefix}_runs.png": f"{url}/#/experiments/{experiment}/runs",
            f"{prefix}_compare.png": f"{url}/#/compare-runs?runs={urllib.parse.quote(json.dumps(searched))}"
                                     f"&experiments={urllib.parse.quote(json.dumps([experiment]))}",
        }
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1700, "height": 1000})
            columns = (["role", "regime_images", "score_augment.p", args.metric, "memorization_max", "memorization_onset_kimg"]
                       if args.curves else ["regime_fraction", "score_augment.p", args.metric, "loss_gap", "leakage"])
            _run_list(page, shots[f"{prefix}_runs.png"], args.out / f"{prefix}_runs.png", ["Dataset", "Source", "Models", *columns])
            _comparison(page, shots[f"{prefix}_compare.png"], args.out / f"{prefix}_compare.png",
                        ["score_augment.p", "model.dropout", "clean_augment.p", "regime_fraction"], args.metric)
            if args.curves:
                arms = [c for c in children if c.data.tags.get("phase") in ("confirm", "ablation")
                        and (args.images is None or c.data.params.get("regime_images") == str(args.images))]
                arms.sort(key=lambda c: c.info.run_name)
                shots[f"{prefix}_{args.curves}_curves.png"] = curves_url = (
                    f"{url}/#/metric?runs={urllib.parse.quote(json.dumps([c.info.run_id for c in arms]))}"
                    f"&metric={urllib.parse.quote(json.dumps(args.curves))}&experiments={urllib.parse.quote(json.dumps([experiment]))}"
                    f"&plot_metric_keys={urllib.parse.quote(json.dumps([args.curves]))}&x_axis=step&y_axis_scale=linear")
                _curves(page, curves_url, args.out / f"{prefix}_{args.curves}_curves.png")
            browser.close()
        for name in shots:
            print(f"wrote {args.out / name} ({(args.out / name).stat().st_size // 1024} KiB)")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its gunicorn/uvicorn workers: only what we started
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
