"""Starting ``helix serve`` under mpiexec from another program (the serve tests, ``helix bench serve``):
on a free port (--port 0; the server prints the port it got), a readiness wait on /health, a hard limit on
the whole job (``timeout`` around mpiexec), and stopped with SIGTERM (then SIGKILL if it lingers).

Every rank runs one OpenMP thread and gives its core away while it waits in MPI
(MPIR_CVAR_ENABLE_HEAVY_YIELD), as tests/mpi_launch.py and helix.bench.common launch MPI jobs; a variable
already set in the environment wins.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from helix.comm import mpiexec

__all__ = ["RouterProcess", "ServerProcess"]

_MPI_ENV = {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1", "OMP_NUM_THREADS": "1"}
_LISTENING = re.compile(r"listening on http://([0-9.]+):(\d+)")


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


class ServerProcess:
    """`timeout <limit> mpiexec -n <ranks> python -m helix serve --port 0 <args>`; output in log_path."""

    def __init__(
        self,
        ranks: int,
        args: list[str],
        log_path: Path,
        limit_s: float = 600,
        env: dict[str, str] | None = None,
    ) -> None:
        import helix

        env = {**_MPI_ENV, **os.environ, **(env or {})}
        python_dir = str(Path(helix.__path__[0]).parent)
        env["PYTHONPATH"] = python_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.command = [
            "timeout", "-k", "5", str(limit_s), mpiexec(), "-n", str(ranks), sys.executable,
            "-m", "helix", "serve", "--host", "127.0.0.1", "--port", "0", *args,
        ]  # fmt: skip
        self.ranks = ranks
        self.log_path = log_path
        self._log = open(log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            self.command,
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
                    if _get_status(self.url + "/health") == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"helix serve not ready after {timeout_s} s:\n{self.log()}")

    def send_sigterm(self) -> None:
        """SIGTERM to mpiexec, which forwards it to every rank (as a user's `kill` would). Not to the
        `timeout` around it: timeout would pass it on too, but then SIGKILL the job 5 s later."""
        os.kill(self._mpiexec_pid() or self.proc.pid, signal.SIGTERM)

    def _mpiexec_pid(self) -> int | None:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:  # the parent is our timeout
                return int(stat.parent.name)
        return None

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM (send_sigterm) and wait: the job's exit code (-9 if it had to be killed)."""
        if self.proc.poll() is None:
            self.send_sigterm()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # timeout leads its own process group: the job
                self.proc.wait()
                return -9
        return self.proc.returncode

    def stop(self) -> None:
        self.terminate()
        self._log.close()


class RouterProcess:
    """`timeout <limit> python -m helix router --port 0 --context URL... --generation URL...`; output in
    log_path; stop() ends it (SIGTERM to its process group, then SIGKILL)."""

    def __init__(
        self, context: list[str], generation: list[str], log_path: Path, limit_s: float = 600
    ) -> None:
        import helix

        env = dict(os.environ)
        python_dir = str(Path(helix.__path__[0]).parent)
        env["PYTHONPATH"] = python_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        args = [a for u in context for a in ("--context", u)] + [
            a for u in generation for a in ("--generation", u)
        ]
        self.log_path = log_path
        self._log = open(log_path, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                "timeout",
                "-k",
                "5",
                str(limit_s),
                sys.executable,
                "-m",
                "helix",
                "router",
                "--port",
                "0",
                *args,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = ""

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if found:
                self.url = f"http://{found.group(1)}:{found.group(2)}"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"helix router exited:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.1)
        raise TimeoutError(f"helix router not ready after {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # timeout leads its own process group
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
