"""Helpers of the disaggregated-serving tests: the model they share (12 heads, so that tp * cp may be 2, 3
or 4), the router as a subprocess, JSON POSTs and the KV blocks a server holds."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from helix.serve.launch import RouterProcess
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
