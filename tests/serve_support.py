"""Starting `helix serve` under mpiexec from a test, as a user would: on a free loopback port (--port 0;
the server prints the port it got), a readiness wait on /health, a hard timeout on the whole job
(`timeout` around mpiexec, as tests/mpi_launch.py does), and always stopped in the end (SIGTERM, then
SIGKILL if it has not exited)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from helix.comm import mpiexec
from mpi_launch import MPI_ENV, ROOT

__all__ = ["ServerProcess", "http_request", "metrics_values"]

_LISTENING = re.compile(r"listening on http://([0-9.]+):(\d+)")


class ServerProcess:
    """`timeout <limit> mpiexec -n <ranks> python -m helix serve --port 0 <args>`; output in log_path."""

    def __init__(self, ranks: int, args: list[str], log_path: Path, limit_s: float = 600) -> None:
        import helix

        env = {**MPI_ENV, **os.environ}
        python_dir = str(Path(helix.__path__[0]).parent)
        env["PYTHONPATH"] = python_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.command = [
            "timeout", "-k", "5", str(limit_s), mpiexec(), "-n", str(ranks), sys.executable,
            "-m", "helix", "serve", "--host", "127.0.0.1", "--port", "0", *args,
        ]  # fmt: skip
        self.ranks = ranks
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.host, self.port = "127.0.0.1", 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Until the server has printed its port and answers /health with 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"helix serve exited with {self.proc.returncode}:\n{self.log()}")
            found = _LISTENING.search(self.log())
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                try:
                    if http_request(self, "GET", "/health", timeout=5)[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"helix serve not ready after {timeout_s} s:\n{self.log()}")

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM to the job (timeout forwards it to mpiexec, which forwards it to every rank); its exit
        code (-9 if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode

    def stop(self) -> None:
        self.terminate()
        self._log.close()


def http_request(
    server: ServerProcess, method: str, path: str, body: bytes | str | None = None, timeout: float = 60
) -> tuple[int, bytes]:
    """One request over a fresh connection: (status, body)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def metrics_values(server: ServerProcess) -> dict[str, float]:
    """GET /metrics as {"name{labels}": value} (comments left out)."""
    status, body = http_request(server, "GET", "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def error_of(body: bytes) -> dict:
    return json.loads(body)["error"]
