"""One DeepSeek-V3-shaped decoder layer decoded on the GPU (helix._core.Engine with device="cuda").

The real attention dimensions (hidden 7168, 128 heads, q_lora 1536, kv_lora 512, rope 64, nope 128, v 128),
an MoE layer with fewer routed experts (16 instead of 256, top-8 of 8 groups, 1 shared expert, width 2048),
the real vocabulary for embedding and lm_head, bf16 weights and bf16 KV cache, one rank (tp = cp = 1).
Every sequence's cache holds `context` tokens written straight into the device pool (plus the tokens of
earlier steps); each timed step decodes one token per sequence (the whole engine step: embedding, the
layer, lm_head, logits to the host).
Weights are a random tile repeated (values do not matter for timing; they stay finite).

    python -m helix.bench.cuda_layer [--context 32768] [--batch 1 8] [--steps 20] [--smoke] [--json PATH]

Writes JSON to PATH, or to $OUT/cuda_layer.json when OUT is set.
--smoke runs the same engine step on SMOKE_LAYER (V3's attention heads and latent widths, everything else
tiny): the figures mean nothing; it is the only mode the SIMT emulator accepts (a check that this script
works before a GPU run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import ml_dtypes
import numpy as np

from helix import _core

__all__ = ["SMOKE_LAYER", "V3_LAYER", "format_table", "main", "run"]

V3_LAYER = {
    "vocab_size": 129280,
    "hidden_size": 7168,
    "num_layers": 1,
    "num_heads": 128,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "n_routed_experts": 16,
    "num_experts_per_tok": 8,
    "n_shared_experts": 1,
    "n_group": 8,
    "topk_group": 4,
    "first_k_dense_replace": 0,
    "routed_scaling_factor": 2.5,
}
# 128 heads and the 512 + 64 latent keep the tensor-core attention path; the rest is small enough to emulate.
SMOKE_LAYER = {
    **V3_LAYER,
    "vocab_size": 512,
    "hidden_size": 256,
    "q_lora_rank": 64,
    "intermediate_size": 256,
    "moe_intermediate_size": 64,
}
TOKENS_PER_BLOCK = 64


def _config(layer: dict[str, object], batch: int, context: int, steps: int) -> object:
    ec = _core.EngineConfig()
    for k, v in layer.items():
        setattr(ec, k, v)
    ec.softmax_scale = float((layer["qk_nope_head_dim"] + layer["qk_rope_head_dim"]) ** -0.5)
    rope = layer["qk_rope_head_dim"]
    ec.rope_inv_freq = [float(10000.0 ** (-2 * i / rope)) for i in range(rope // 2)]
    ec.tokens_per_block = TOKENS_PER_BLOCK
    ec.num_kv_blocks = batch * (-(-(context + steps + 8) // TOKENS_PER_BLOCK))
    ec.kv_dtype = "bfloat16"
    return ec


def _weights(engine, rng: np.random.Generator):
    """(name, array) for every weight: a random tile repeated, scaled 1/sqrt(fan_in); norms near 1."""
    tile = rng.standard_normal(1 << 20).astype(np.float32)
    for name, (shape, matrix) in engine.expected_weight_shapes().items():
        size = int(np.prod(shape))
        if matrix:
            w = np.resize((tile / np.sqrt(shape[-1])).astype(ml_dtypes.bfloat16), size).reshape(shape)
        elif name.endswith("e_score_correction_bias"):
            w = np.zeros(shape, np.float32)
        elif name.endswith(".gate"):
            w = np.resize(tile / np.sqrt(shape[-1]), size).reshape(shape).astype(np.float32)
        else:  # norms
            w = (1.0 + 0.1 * np.resize(tile, size)).reshape(shape).astype(np.float32)
        yield name, np.ascontiguousarray(w)


def run(batches: list[int], context: int, steps: int, smoke: bool = False) -> dict[str, object]:
    """One engine whose pool holds max(batches) sequences of `context` tokens; each batch size decodes
    `steps` timed tokens (after 3 warm-up steps) on the first `batch` sequences."""
    cuda = _core.cuda
    if cuda.device_count() == 0:
        raise _core.HelixError("no CUDA device visible: the layer benchmark needs a GPU")
    if cuda.emulated() and not smoke:
        raise _core.HelixError("timings under the SIMT emulator mean nothing: benchmark on a real GPU")
    layer = SMOKE_LAYER if smoke else V3_LAYER
    rng = np.random.default_rng(0)
    n_seqs = max(batches)
    config = _config(layer, n_seqs, context, len(batches) * (steps + 3))
    engine = _core.Engine(config, _core.self_communicator(), device="cuda")
    for name, w in _weights(engine, rng):
        engine.set_weight(name, w)
    engine.check_weights()
    lengths = np.full(n_seqs, context, np.int64)
    for s in range(n_seqs):
        engine.add_sequence(s)
        engine.fill_sequence_random(s, context, seed=s + 1, scale=1.0)
    rows = []
    for batch in batches:
        seqs = np.arange(batch, dtype=np.int64)
        times = []
        before = dict(engine.timings)
        for i in range(steps + 3):
            tokens = rng.integers(0, layer["vocab_size"], batch, dtype=np.int64)
            t0 = time.perf_counter()
            logits = engine.step(tokens, lengths[:batch].copy(), seqs, seqs, seqs)
            times.append(time.perf_counter() - t0)
            lengths[:batch] += 1
            if i == 2:  # warm-up done: measure from here
                times.clear()
                before = dict(engine.timings)
        if not np.isfinite(logits).all():
            raise _core.HelixError("the layer benchmark produced non-finite logits")
        after = engine.timings
        n = after["steps"] - before["steps"]
        parts = {k: 1e3 * (after[k] - before[k]) / n for k in after if k.endswith("_s")}
        rows.append(
            {
                "batch": batch,
                "context": context,
                "step_ms_median": 1e3 * float(np.median(times)),
                "step_ms_min": 1e3 * float(np.min(times)),
                "tokens_per_s": batch / float(np.median(times)),
                "components_ms": parts,
                "device_gib": engine.memory_bytes / 2**30,
            }
        )
    return {"device": cuda.device_name(), "smoke": smoke, "layer": layer, "rows": rows}


def format_table(result: dict[str, object]) -> str:
    lines = ["SMOKE RUN: tiny sizes, the figures mean nothing"] if result.get("smoke") else []
    lines += [
        f"V3-shaped layer decode step on {result['device']} (1 layer, 16 experts, bf16, whole engine step)",
        f"{'batch':>5} {'context':>8} {'step ms':>8} {'tok/s':>8} {'attn':>7} {'linear':>7} {'moe':>7} "
        f"{'other':>7} {'GiB':>6}",
    ]
    for r in result["rows"]:  # type: ignore[union-attr]
        c = r["components_ms"]
        lines.append(
            f"{r['batch']:>5} {r['context']:>8} {r['step_ms_median']:>8.3f} {r['tokens_per_s']:>8.1f} "
            f"{c['attention_s']:>7.3f} {c['linear_s']:>7.3f} {c['moe_s']:>7.3f} {c['other_s']:>7.3f} "
            f"{r['device_gib']:>6.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helix.bench.cuda_layer", description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="SMOKE_LAYER: checks the script, measures nothing")
    ap.add_argument("--json", default=None, help="output path (default $OUT/cuda_layer.json when OUT is set)")
    args = ap.parse_args(argv)
    result = run(args.batch, args.context, args.steps, smoke=args.smoke)
    out_dir = os.environ.get("OUT")
    path = args.json or (os.path.join(out_dir, "cuda_layer.json") if out_dir else None)
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
