"""Benchmark of ``helix serve``: a bounded load generator on loopback.

The server is started under mpiexec (helix.serve.launch, --port 0) on a model (default: the embedded
tiny model with its tokenizer, written to a temporary folder). For every concurrency c, c client threads
send streamed /v1/completions requests back to back (greedy, ignore_eos: every request generates exactly
--max-tokens tokens) until --requests requests have finished; each client measures, from its own clock,
the time to first token (request sent -> first token's chunk) and the inter-token latency (between
consecutive token chunks). Reported per c: TTFT and ITL p50 / p90 / p99, requests/s and output tokens/s
over the level's wall time.

The ceiling, measured in the same run: ``helix generate`` on the same layout and flags decoding c prompts
of the same length at once, 64 tokens each; the median of its decode-only steps (batch c, no prefill, no
HTTP) gives the decode ceiling c / step tokens/s, and the floor of the inter-token latency. The server's
output tokens/s (prefill and HTTP included) is reported as a ratio of that ceiling, its ITL p50 as a
ratio of that step. Every request has a timeout; the whole server job is under ``timeout``.
JSON and two PNGs (throughput, latency) in --out.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from helix.bench.common import MPI_ENV, machine_info, plot_lines, write_json
from helix.comm import mpiexec

__all__ = ["main", "stream_one", "percentiles"]

_CEILING_TOKENS = 64  # tokens per prompt of the helix generate run that measures the decode step


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    arr = np.asarray(values) * 1e3
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)}  # milliseconds


def stream_one(
    host: str, port: int, prompt: list[int], max_tokens: int, timeout: float
) -> tuple[float, list[float], int]:
    """One streamed completion: (TTFT s, inter-token gaps s, tokens)."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        stamps = []
        for line in resp:
            if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
                stamps.append(time.perf_counter())
    finally:
        conn.close()
    if len(stamps) != max_tokens:
        raise RuntimeError(f"expected {max_tokens} token chunks, got {len(stamps)}")
    return stamps[0] - t0, list(np.diff(stamps)), len(stamps)


def _level(host: str, port: int, prompts: list[list[int]], args, concurrency: int) -> dict:
    """c threads, back to back, until args.requests requests have finished."""
    todo = iter(range(args.requests))
    lock = threading.Lock()
    ttft, itl, tokens, errors = [], [], [0], []

    def client() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                first, gaps, n = stream_one(
                    host, port, prompts[i % len(prompts)], args.max_tokens, args.timeout
                )
            except (OSError, RuntimeError) as exc:
                errors.append(str(exc))
                return
            with lock:
                ttft.append(first)
                itl.extend(gaps)
                tokens[0] += n

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed at concurrency {concurrency}: {errors[0]}")
    return {
        "concurrency": concurrency,
        "requests": args.requests,
        "wall_s": wall,
        "requests_per_s": args.requests / wall,
        "output_tokens_per_s": tokens[0] / wall,
        "ttft_ms": percentiles(ttft),
        "itl_ms": percentiles(itl),
    }


def _generate_step_ms(args, layout: list[str], prompts: list[list[int]], concurrency: int) -> float:
    """The median decode-only step of helix generate with `concurrency` prompts at once (same layout and
    flags), in ms."""
    command = ["timeout", "-k", "5", "600", mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "helix"]
    command += [
        "generate",
        "--model",
        str(args.model),
        *layout,
        "--json",
        "--ignore-eos",
        "--max-new-tokens",
        "64",
    ]
    for p in prompts[:concurrency]:
        command += ["--prompt-token-ids", ",".join(map(str, p))]
    env = {**MPI_ENV, "OMP_NUM_THREADS": "1", **os.environ}
    out = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(
            f"helix generate failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if any(o["finish_reason"] != "length" for o in result["outputs"]) or not result["ttl_ms"]:
        raise RuntimeError(f"helix generate did not decode every prompt: {result['outputs'][0]['error']}")
    return float(np.median(result["ttl_ms"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="helix bench serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint folder (default: the tiny model with a tokenizer)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--cp", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per request")
    ap.add_argument("--out", default="bench-results/serve")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.tp * args.cp != args.ranks or min(levels) < 1 or args.requests < 1 or args.max_tokens < 1:
        ap.error("need --ranks = --tp * --cp, concurrency, --requests and --max-tokens >= 1")
    from helix.serve.launch import ServerProcess

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from helix.tiny import make_tiny_model
            from helix.tiny_tokenizer import make_tiny_tokenizer

            args.model = Path(tmp) / "tiny"
            make_tiny_model(args.model)
            make_tiny_tokenizer(args.model)
        rng = np.random.default_rng(0)
        prompts = [rng.integers(6, 1000, size=args.prompt_len).tolist() for _ in range(max(levels))]
        layout = ["--tp", str(args.tp), "--cp", str(args.cp)]
        # the pool holds every client's request and the ceiling's, with room for block rounding
        need = max(levels) * (args.prompt_len + max(args.max_tokens, _CEILING_TOKENS)) * 2
        engine = [*layout, "--tokens-per-block", "32", "--max-tokens", str(need)]
        server = ServerProcess(
            args.ranks, ["--model", str(args.model), *engine], Path(tmp) / "server.log", 3600
        )
        rows = []
        try:
            server.wait_ready()
            stream_one(server.host, server.port, prompts[0], 2, args.timeout)  # warm-up
            for c in levels:
                row = _level(server.host, server.port, prompts, args, c)
                rows.append(row)
                print(
                    f"c={c:3d}: {row['requests_per_s']:.2f} req/s, {row['output_tokens_per_s']:.1f} tok/s; "
                    f"TTFT p50/p90/p99 {_fmt(row['ttft_ms'])} ms; ITL {_fmt(row['itl_ms'])} ms",
                    flush=True,
                )
        finally:
            rc = server.terminate()
            server.stop()
        if rc != 0:
            raise RuntimeError(f"helix serve exited with {rc}:\n{server.log()[-3000:]}")
        for row in rows:
            step_ms = _generate_step_ms(args, engine, prompts, row["concurrency"])
            row["generate_decode_step_ms"] = step_ms
            row["ceiling_tokens_per_s"] = row["concurrency"] * 1e3 / step_ms
            row["tokens_per_s_vs_ceiling"] = row["output_tokens_per_s"] / row["ceiling_tokens_per_s"]
            row["itl_p50_vs_step"] = row["itl_ms"]["p50"] / step_ms
            print(
                f"c={row['concurrency']:3d}: helix generate decode step {step_ms:.2f} ms "
                f"(ceiling {row['ceiling_tokens_per_s']:.1f} tok/s); server tok/s / ceiling "
                f"{row['tokens_per_s_vs_ceiling']:.2f}, ITL p50 / step {row['itl_p50_vs_step']:.2f}"
            )
    return _write(args, rows)


def _fmt(p: dict[str, float]) -> str:
    return "/".join(f"{p[k]:.1f}" for k in ("p50", "p90", "p99"))


def _write(args, rows: list[dict]) -> int:
    out = Path(args.out)
    config = {k: v for k, v in vars(args).items() if k != "model"} | {"model": str(args.model)}
    write_json(out / "serve.json", {"machine": machine_info(1), "config": config, "levels": rows})
    cs = [r["concurrency"] for r in rows]
    plot_lines(
        out / "serve-throughput.png",
        {
            "helix serve (HTTP, streamed)": (cs, [r["output_tokens_per_s"] for r in rows]),
            "decode ceiling (helix generate, same batch)": (cs, [r["ceiling_tokens_per_s"] for r in rows]),
        },
        xlabel="concurrent clients", ylabel="output tokens/s", title="helix serve: throughput",
    )  # fmt: skip
    plot_lines(
        out / "serve-latency.png",
        {
            "TTFT p50": (cs, [r["ttft_ms"]["p50"] for r in rows]),
            "TTFT p99": (cs, [r["ttft_ms"]["p99"] for r in rows]),
            "ITL p50": (cs, [r["itl_ms"]["p50"] for r in rows]),
            "ITL p99": (cs, [r["itl_ms"]["p99"] for r in rows]),
            "helix generate decode step": (cs, [r["generate_decode_step_ms"] for r in rows]),
        },
        xlabel="concurrent clients", ylabel="ms", title="helix serve: latency", logy=True,
    )  # fmt: skip
    print(f"wrote {out / 'serve.json'}, serve-throughput.png, serve-latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
