"""Helpers of the disaggregated-serving tests: the model they share (12 heads, so that tp * cp may be 2, 3
or 4), the router as a subprocess, JSON POSTs and the KV blocks a server holds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from helix.tiny import make_tiny_model
from serve_support import metrics_values

__all__ = ["RouterProcess", "kv_blocks_used", "make_disagg_model", "post", "wait_blocks_free"]

# heads, experts and FFN widths divisible by 2, 3 and 4
MODEL_OVERRIDES = dict(
    num_attention_heads=12, num_key_value_heads=12, n_routed_experts=12, intermediate_size=384,
    moe_intermediate_size=48,
)  # fmt: skip


def make_disagg_model(path: Path, seed: int = 0) -> Path:
    make_tiny_model(path, seed, **MODEL_OVERRIDES)
    return path


def post(url: str, body: dict, timeout: float = 120) -> tuple[int, dict]:
    """(status, JSON answer) of one POST."""
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def kv_blocks_used(server) -> list[float]:
    """KV blocks in use on every rank of a helix serve job (from /metrics)."""
    m = metrics_values(server)
    return [v for k, v in sorted(m.items()) if k.startswith("helix_kv_blocks_used")]


def wait_blocks_free(server, timeout_s: float = 30) -> None:
    """Until every rank of the server holds no KV block (a context frees a handle when it is released)."""
    deadline = time.monotonic() + timeout_s
    while any(used := kv_blocks_used(server)):
        assert time.monotonic() < deadline, f"KV blocks still in use after {timeout_s} s: {used}"
        time.sleep(0.1)
    assert len(used) == server.ranks


class RouterProcess:
    """`timeout <limit> python -m helix router --port 0 ...`; output in log_path."""

    def __init__(self, context: list[str], generation: list[str], log_path: Path, limit_s: float = 600):
        import helix

        env = dict(os.environ)
        python_dir = str(Path(helix.__path__[0]).parent)
        env["PYTHONPATH"] = python_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        args = [a for u in context for a in ("--context", u)] + [
            a for u in generation for a in ("--generation", u)
        ]
        self.log_path = log_path
        self._log = open(log_path, "w")
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
            start_new_session=True,
        )
        self.url = ""

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"listening on (http://[0-9.]+:\d+)", self.log_path.read_text())
            if found:
                self.url = found.group(1)
                return
            assert self.proc.poll() is None, f"the router exited:\n{self.log_path.read_text()}"
            time.sleep(0.1)
        raise TimeoutError(f"the router is not ready after {timeout_s} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
