"""Benchmark of disaggregated serving: time to first token (TTFT) and inter-token latency (ITL),
router -> context server -> generation server vs the aggregated server, at several prompt lengths.

Both deployments serve the same model; the aggregated server and the generation server have the same
layout (--gen-cp, blocks of 16), the context server its own (--ctx-cp, blocks of 32), so every hand-off is
re-sharded. They run one after the other (this machine is small: the other is stopped meanwhile). For each
prompt length, --requests streamed greedy requests of --max-tokens tokens are sent one at a time (plus one
warm-up), and the medians of TTFT and ITL are reported with the ratios disaggregated / aggregated.

The floor of the hand-off, measured in the same run: the KV bytes of a prompt (layers x positions x row)
over this machine's memory copy bandwidth (helix.bench.common.copy_bandwidth). The hand-off also pays an
HTTP hop through the router, the claim, and the import step. JSON and a PNG in --out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from helix.bench.common import copy_bandwidth, machine_info, plot_lines, write_json
from helix.bench.serve import stream_one

__all__ = ["main"]


def _measure(url: str, prompts: list[list[int]], args) -> dict:
    """Median TTFT and ITL (ms) of the given prompts, one request at a time, after one warm-up."""
    host, port = url.removeprefix("http://").split(":")
    stream_one(host, int(port), prompts[0], 2, args.timeout)
    ttft, itl = [], []
    for p in prompts:
        first, gaps, _ = stream_one(host, int(port), p, args.max_tokens, args.timeout)
        ttft.append(first)
        itl += gaps
    return {"ttft_ms": float(np.median(ttft)) * 1e3, "itl_ms": float(np.median(itl)) * 1e3}


def _run(model: Path, tmp: Path, prompts: dict[int, list[list[int]]], args, disaggregated: bool) -> dict:
    from helix.serve.launch import RouterProcess, ServerProcess

    common = ["--model", str(model), "--max-tokens", str(2 * max(prompts) + 64), "--max-batch-tokens", "512"]
    gen = ["--cp", str(args.gen_cp), "--tokens-per-block", "16", *common]
    procs = []
    try:
        if disaggregated:
            ctx_args = ["--cp", str(args.ctx_cp), "--tokens-per-block", "32", *common, "--role", "context"]
            procs.append(ServerProcess(args.ctx_cp, ctx_args, tmp / "ctx.log", 3600))
            procs.append(ServerProcess(args.gen_cp, [*gen, "--role", "generation"], tmp / "gen.log", 3600))
            for p in procs:
                p.wait_ready(timeout_s=300)
            router = RouterProcess([procs[0].url], [procs[1].url], tmp / "router.log", 3600)
            procs.append(router)
            router.wait_ready()
            url = router.url
        else:
            procs.append(ServerProcess(args.gen_cp, gen, tmp / "agg.log", 3600))
            procs[0].wait_ready(timeout_s=300)
            url = procs[0].url
        return {n: _measure(url, ps, args) for n, ps in prompts.items()}
    finally:
        for p in reversed(procs):
            p.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="helix bench disagg", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="checkpoint folder (default: the tiny model with 12 heads)")
    ap.add_argument("--ctx-cp", type=int, default=1)
    ap.add_argument("--gen-cp", type=int, default=2)
    ap.add_argument("--prompt-lens", default="16,256,1024", help="comma-separated prompt lengths")
    ap.add_argument("--requests", type=int, default=5, help="requests per prompt length (median)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=300, help="seconds per request")
    ap.add_argument("--out", default="bench-results/disagg")
    args = ap.parse_args(argv)
    lens = [int(n) for n in args.prompt_lens.split(",")]
    if min(lens) < 1 or args.requests < 1 or args.max_tokens < 2:
        ap.error("prompt lengths and --requests must be >= 1, --max-tokens >= 2")
    rng = np.random.default_rng(0)
    prompts = {n: [rng.integers(6, 990, size=n).tolist() for _ in range(args.requests)] for n in lens}
    copy_gbs = copy_bandwidth()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else _tiny12(Path(tmp) / "tiny12")
        t0 = time.perf_counter()
        agg = _run(model, Path(tmp), prompts, args, disaggregated=False)
        dis = _run(model, Path(tmp), prompts, args, disaggregated=True)
        row_bytes, layers = _kv_shape(model)
    rows = []
    for n in lens:
        kv_bytes = n * layers * row_bytes
        row = {"prompt_len": n, "aggregated": agg[n], "disaggregated": dis[n], "kv_bytes": kv_bytes}
        row["ttft_ratio"] = dis[n]["ttft_ms"] / agg[n]["ttft_ms"]
        row["itl_ratio"] = dis[n]["itl_ms"] / agg[n]["itl_ms"]
        row["handoff_floor_ms"] = 2 * kv_bytes / (copy_gbs * 1e9) * 1e3  # the copy reads and writes
        rows.append(row)
        print(
            f"prompt {n:5d}: TTFT {agg[n]['ttft_ms']:7.1f} -> {dis[n]['ttft_ms']:7.1f} ms "
            f"(x{row['ttft_ratio']:.2f}), ITL {agg[n]['itl_ms']:6.2f} -> {dis[n]['itl_ms']:6.2f} ms "
            f"(x{row['itl_ratio']:.2f}); KV {kv_bytes / 1e6:.2f} MB, "
            f"copy floor {row['handoff_floor_ms']:.3f} ms",
            flush=True,
        )
    out = Path(args.out)
    config = {k: v for k, v in vars(args).items() if k != "model"} | {"model": str(args.model or "tiny12")}
    result = {"machine": machine_info(1), "copy_gb_per_s": copy_gbs, "config": config, "rows": rows}
    result["wall_s"] = time.perf_counter() - t0
    write_json(out / "disagg.json", result)
    plot_lines(
        out / "disagg-latency.png",
        {
            "TTFT aggregated": (lens, [r["aggregated"]["ttft_ms"] for r in rows]),
            "TTFT disaggregated": (lens, [r["disaggregated"]["ttft_ms"] for r in rows]),
            "ITL aggregated": (lens, [r["aggregated"]["itl_ms"] for r in rows]),
            "ITL disaggregated": (lens, [r["disaggregated"]["itl_ms"] for r in rows]),
        },
        xlabel="prompt tokens", ylabel="ms (median)", title="disaggregated vs aggregated serving", logy=True,
    )  # fmt: skip
    print(f"wrote {out / 'disagg.json'}, disagg-latency.png")
    return 0


def _tiny12(path: Path) -> Path:
    from helix.tiny import make_tiny_model

    make_tiny_model(
        path, num_attention_heads=12, num_key_value_heads=12, n_routed_experts=12, intermediate_size=384,
        moe_intermediate_size=48,
    )  # fmt: skip
    return path


def _kv_shape(model: Path) -> tuple[int, int]:
    """(bytes of one KV row in float32, layers)."""
    from helix.config import ModelConfig

    cfg = ModelConfig.from_pretrained(model)
    return (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4, cfg.num_hidden_layers
