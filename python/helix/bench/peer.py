"""Benchmark against the peer: the decode benchmark model (helix.bench.decode, preset "bench") decoded by
Hugging Face transformers' DeepseekV3ForCausalLM on this CPU in float32, and by helix (one rank, bf16
weights and KV, the README's default runtime path), at the same context, in one run, so that the speedup
is a ratio of two figures measured side by side.

Both caches are filled directly, not by a prefill (a 4K-token HF prefill costs minutes on 2 cores and
its values do not change the per-step cost): helix's paged cache with random unit-scale latent rows
(helix.bench.decode.fill_kv), transformers' DynamicCache with random latent rows of the same shapes
(transformers 5 caches the compressed latent c_kv [1, 1, S, 512] and k_pe [1, 1, S, 64] per layer and
re-expands it through kv_b_proj on every step). Then both decode the same token ids, one token per step,
at positions context, context + 1, ...; the time per step is the median over --steps steps after one
warm-up step. Both use --threads threads (torch.set_num_threads / OpenMP).

``python -m helix bench peer --json`` prints one JSON object with ``helix_step_ms``, ``hf_step_ms`` and
``speedup`` (hf / helix) at a 4K-token context as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from helix.bench.common import ROOT, machine_info, plot_bars, set_threads, time_calls, write_json
from helix.bench.decode import MODEL_PRESETS, ensure_model, fill_kv

__all__ = ["main", "helix_step_time", "hf_step_time"]

TOKENS = (3, 17, 101, 29, 5, 211, 47, 13)  # the decoded token ids (same for both systems)


def helix_step_time(model_dir: str, context: int, steps: int, threads: int) -> float:
    """Median seconds per single-token decode step of helix (cp = 1, bf16) at ``context`` cached tokens."""
    from helix.comm import self_communicator
    from helix.engine import HelixEngine

    set_threads(threads)
    engine = HelixEngine(
        model_dir, comm=self_communicator(), max_tokens=context + steps + 64, dtype="bfloat16", progress=False
    )
    fill_kv(engine, 1, context, np.random.default_rng(0))
    core, one, state = engine._engine, np.zeros(1, np.int64), {"i": 0}

    def step() -> None:
        i = state["i"]
        tok = np.array([TOKENS[i % len(TOKENS)]], np.int64)
        core.step(tok, np.array([context + i], np.int64), np.array([1], np.int64), one, one)
        state["i"] += 1

    return time_calls(step, steps).median


def hf_step_time(model_dir: str, context: int, steps: int, threads: int) -> tuple[float, str]:
    """Median seconds per decode step of transformers (float32) at ``context`` cached tokens, and the
    attention implementation it used."""
    import torch
    from transformers import DeepseekV3ForCausalLM, DynamicCache

    torch.set_num_threads(threads)
    model = DeepseekV3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    cache = DynamicCache(config=cfg)
    for layer in range(cfg.num_hidden_layers):
        c_kv = torch.randn(1, 1, context, cfg.kv_lora_rank, generator=gen)
        k_pe = torch.randn(1, 1, context, cfg.qk_rope_head_dim, generator=gen)
        cache.update(c_kv, k_pe, layer)
    state = {"i": 0}

    def step() -> None:
        i = state["i"]
        ids = torch.tensor([[TOKENS[i % len(TOKENS)]]], dtype=torch.long)
        with torch.no_grad():
            model(input_ids=ids, position_ids=torch.tensor([[context + i]]), cache=cache, use_cache=True)
        state["i"] += 1

    t = time_calls(step, steps).median
    return t, str(getattr(cfg, "_attn_implementation", "unknown"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix bench peer", description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=4096, help="cached tokens before the timed steps")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per system (median)")
    parser.add_argument("--threads", type=int, default=1, help="threads for both systems")
    parser.add_argument("--model", default="bench", choices=sorted(MODEL_PRESETS))
    parser.add_argument(
        "--model-dir", default=None, help="checkpoint cache (default build/bench-model[-tiny])"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    parser.add_argument("--out", default="bench-results/peer.json")
    parser.add_argument("--png", default="bench-results/peer.png")
    args = parser.parse_args(argv)
    if args.context < 1 or args.steps < 1 or args.threads < 1:
        parser.error("--context, --steps and --threads must be positive")
    model_dir = args.model_dir or str(
        ROOT / "build" / ("bench-model" if args.model == "bench" else "bench-model-tiny")
    )
    ensure_model(args.model, model_dir)
    start = time.time()
    t_helix = helix_step_time(model_dir, args.context, args.steps, args.threads)
    t_hf, attn_impl = hf_step_time(model_dir, args.context, args.steps, args.threads)
    result = {
        "context": args.context,
        "threads": args.threads,
        "steps": args.steps,
        "helix_step_ms": t_helix * 1e3,
        "hf_step_ms": t_hf * 1e3,
        "speedup": t_hf / t_helix,
    }
    meta = {
        **machine_info(args.threads),
        "model": args.model,
        "helix": "cp=1, bf16 weights and KV cache",
        "hf": f"transformers DeepseekV3ForCausalLM, float32, attn_implementation={attn_impl}",
        "timing": f"median of {args.steps} steps after 1 warm-up",
        "seconds": time.time() - start,
    }
    write_json(args.out, {"meta": meta, "result": result})
    plot_bars(
        args.png,
        ["helix (bf16)", "transformers (f32)"],
        [result["helix_step_ms"], result["hf_step_ms"]],
        ylabel="ms per token",
        title=f"decode step at {args.context} tokens, {args.threads} thread(s)",
        logy=True,
    )
    if not args.json:
        print(
            f"Peer: model {args.model!r} at context {args.context}, {args.threads} thread(s); {meta['cpu']}, "
            f"load {meta['loadavg_1_5_15'][0]:.2f}"
        )
        print(
            f"helix {result['helix_step_ms']:.1f} ms/token, "
            f"transformers {result['hf_step_ms']:.1f} ms/token, "
            f"speedup {result['speedup']:.1f}x (wrote {args.out}, {args.png})"
        )
    else:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
