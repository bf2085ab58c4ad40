"""Helpers for end-to-end tests: an MLflow server on a free port, its REST API, headless Chromium.

Imported by test modules of the ``tests`` package as ``from .e2e_helpers import ...``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trackgnn import tracking
from trackgnn.tracking.ui import stop_process_group

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(workdir: Path, startup_timeout_s: float = 120.0) -> Iterator[str]:
    """Run ``trackgnn``'s MLflow UI server (SQLite store and artifacts in ``workdir``).

    Yields the base URL once ``/health`` answers; the server is stopped (whole process group)
    on exit.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = tracking.ui_command(f"sqlite:///{workdir}/mlflow.db", "127.0.0.1", port)
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            env=tracking.mlflow_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches uvicorn's children
            cwd=workdir,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"MLflow server exited with {process.returncode}:\n"
                    + log_path.read_text()[-3000:]
                )
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"MLflow server not up after {startup_timeout_s:.0f} s:\n"
                    + log_path.read_text()[-3000:]
                )
            time.sleep(0.25)
        yield base
    finally:
        # uvicorn runs as a child: the whole group goes
        stop_process_group(process, grace_s=15)


def rest(base: str, endpoint: str, payload: dict[str, Any] | None = None, **query: str) -> Any:
    """Call the MLflow REST API: POST ``payload`` as JSON, or GET with ``query``."""
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{url}: HTTP {error.code}: {error.read()[:500]!r}") from None


def compare_runs_url(base: str, run_ids: Sequence[str], experiment_ids: Sequence[str]) -> str:
    """The MLflow 3 UI's run-comparison page (hash route, JSON lists as query values)."""
    query = urllib.parse.urlencode(
        {"runs": json.dumps(list(run_ids)), "experiments": json.dumps(list(experiment_ids))}
    )
    return f"{base}/#/compare-runs?{query}"


def render_dom(
    url: str,
    profile_dir: Path,
    must_contain: Sequence[str],
    budgets_ms: Sequence[int] = (10_000, 30_000),
) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts.

    Renders with growing virtual-time budgets until every string of ``must_contain`` is in the
    DOM (a React page fills in after its REST calls return); returns the last DOM either way.
    """
    dom = ""
    for budget in budgets_ms:
        profile = profile_dir / f"profile-{budget}"  # a fresh profile each time
        result = subprocess.run(
            [
                str(CHROMIUM),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        dom = result.stdout
        if result.returncode != 0 and not dom:
            raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
        if all(text in dom for text in must_contain):
            break
    return dom
