"""A screenshot of the MLflow UI (headless Chromium), for CI checks and the README.

`serve_mlflow_ui` starts ``mlflow ui`` on a free loopback port in its own process group and stops
it on exit. `chromium_screenshot` uses Chromium's one-shot ``--screenshot`` (needs only the
``chromium`` package); `webdriver_screenshot` drives ``chromedriver`` over the plain WebDriver HTTP
protocol (no selenium) so it can wait for the runs table and expand the study's parent run first,
which shows every trial run under it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CLOSE_ASSISTANT", "chromium_binary", "chromium_screenshot", "free_port", "serve_mlflow_ui", "webdriver_screenshot"]

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return r.read()


@contextlib.contextmanager
def serve_mlflow_ui(backend_uri: str, *, startup_timeout: float = 120.0, log_file: Path | None = None) -> Iterator[str]:
    """``mlflow ui`` on 127.0.0.1:<free port>; yields its base URL; the process group is killed on exit."""
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli) if mlflow_cli.exists() else "mlflow", "ui", "--backend-store-uri", backend_uri,
           "--port", str(port), "--host", "127.0.0.1", "--workers", "1"]
    out = open(log_file, "wb") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited with code {proc.returncode}")
            try:
                _get(base + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"mlflow ui did not answer on {base} within {startup_timeout:.0f}s") from None
                time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if log_file:
            out.close()  # type: ignore[union-attr]


def chromium_screenshot(url: str, out: Path, *, size: tuple[int, int] = (1600, 1000), budget_ms: int = 15000,
                        timeout: float = 120.0) -> Path:
    """One-shot headless Chromium screenshot of ``url`` after ``budget_ms`` of virtual time."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install chromium chromium-driver)")
    out = Path(out)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [binary, *CHROME_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout, check=False)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot for {url}")
    return out


def _wd(base: str, method: str, path: str, body: dict | None = None, timeout: float = 60.0) -> dict:
    data = json.dumps(body or {}).encode() if method == "POST" else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (loopback only)
        return json.loads(r.read() or b"{}")


#: Closes MLflow 3's assistant side panel (it takes a third of the window).
CLOSE_ASSISTANT = ("var b = document.querySelector('button[data-component-id*=\"assistant.chat_panel.close\"]');"
                   "if (b) { b.click(); } return Boolean(b);")


def webdriver_screenshot(url: str, out: Path, *, size: tuple[int, int] = (1600, 1000), expand_runs: bool = True,
                         wait_selector: str = '[data-testid="experiment-view-table-run-color"]',
                         timeout: float = 90.0, scripts: tuple[str, ...] = ()) -> Path:
    """Screenshot of ``url`` via chromedriver: waits for ``wait_selector``, expands parent runs when
    ``expand_runs``, runs ``scripts`` (JavaScript, e.g. `CLOSE_ASSISTANT`), shoots."""
    driver = shutil.which("chromedriver")
    binary = chromium_binary()
    if driver is None or binary is None:
        raise FileNotFoundError("chromedriver/chromium not found (Debian: apt-get install chromium chromium-driver)")
    port = free_port()
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _get(base + "/status", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("chromedriver did not start") from None
                time.sleep(0.2)
        with tempfile.TemporaryDirectory() as profile:
            caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                "binary": binary, "args": [*CHROME_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]}}}}
            sid = _wd(base, "POST", "/session", caps)["value"]["sessionId"]
            try:
                _wd(base, "POST", f"/session/{sid}/url", {"url": url})
                script = {"script": "return document.querySelectorAll(arguments[0]).length", "args": [wait_selector]}
                end = time.monotonic() + timeout
                while _wd(base, "POST", f"/session/{sid}/execute/sync", script)["value"] == 0:
                    if time.monotonic() > end:
                        break
                    time.sleep(0.5)
                if expand_runs:
                    click = ("var b = document.querySelectorAll('button[data-component-id*=\"runnamecellrenderer\"]');"
                             "b.forEach(function (x) { x.click(); }); return b.length;")
                    _wd(base, "POST", f"/session/{sid}/execute/sync", {"script": click, "args": []})
                for js in scripts:
                    time.sleep(1)
                    _wd(base, "POST", f"/session/{sid}/execute/sync", {"script": js, "args": []})
                time.sleep(3)
                png = base64.b64decode(_wd(base, "GET", f"/session/{sid}/screenshot")["value"])
            finally:
                with contextlib.suppress(Exception):
                    _wd(base, "DELETE", f"/session/{sid}")
        Path(out).write_bytes(png)
        return Path(out)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)
