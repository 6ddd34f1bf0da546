"""Helpers of the serve tests: raw HTTP requests and /metrics values. The server itself is started by
helix.serve.launch.ServerProcess (under mpiexec, free loopback port, readiness wait, hard limit)."""

from __future__ import annotations

import http.client
import json

from helix.serve.launch import ServerProcess

__all__ = ["ServerProcess", "error_of", "http_request", "metrics_values"]


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
