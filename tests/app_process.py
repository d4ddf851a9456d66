"""Start the real app (`python app.py ...`) on a free loopback port for tests, and stop it afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180


class AppStartError(RuntimeError):
    """The app exited or did not answer in time; the message ends with its log."""


@dataclass(frozen=True)
class RunningApp:
    url: str  # with a trailing slash
    port: int
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 60) -> None:
        """Block until the app's log contains `text` (routes are added just after Gradio starts serving)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AppStartError(f"the app never logged {text!r}:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float, ok: Sequence[int] = (200,)) -> None:
    """Poll `url` until it answers with a status in `ok`; raise with the log if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AppStartError(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status in ok:
                    return
        except urllib.error.HTTPError as err:
            if err.code in ok:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AppStartError(f"app.py did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_app(args: Sequence[str], workdir: Path, *, ready: Sequence[int] = (200,)) -> Iterator[RunningApp]:
    """`python app.py ARGS --port P` (review database in `workdir` unless ARGS name one), offline, until the
    block ends. `ready` lists the HTTP statuses of GET / that mean "started" (a login page answers 200 too)."""
    port = free_port()
    log = workdir / f"app-{port}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "app.py", *args, "--port", str(port)]
    if "--db" not in args:
        command += ["--db", str(workdir / "reviews.sqlite")]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, process, log, START_TIMEOUT_S, ready)
        yield RunningApp(url, port, log, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
