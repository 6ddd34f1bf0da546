"""``python -m helix generate``: decode prompts with Helix parallelism (``mpiexec -n N``, N = tp * cp)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from helix.device import CUDA_COMMS, DEVICES
from helix.precision import PRECISIONS

__all__ = ["main", "build_parser", "add_model_arguments", "parallel_config_from_args", "make_llm"]


def _token_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError(f"expected at least one token id, got {text!r}")
    return ids


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model, layout and engine flags (shared by helix generate and helix serve; see make_llm)."""
    p.add_argument(
        "--model", required=True, help="checkpoint folder (config.json, *.safetensors, tokenizer.json)"
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="storage of weights and KV cache",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="compute: float32 (float32-grade), or bf16 (opt-in, with --dtype bfloat16 on a CPU with "
        "AVX512_BF16 or AMX: activations rounded to bf16 in prefill linear layers and attention; faster, "
        "about twice the logit error of the bf16 KV cache alone; docs/performance.md 9.7)",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the engine runs: cpu, or cuda (one GPU per local rank, NCCL between ranks)",
    )
    p.add_argument(
        "--cuda-comm",
        choices=CUDA_COMMS,
        default="nccl",
        help="with --device cuda: nccl (one GPU per rank), or host (collectives over MPI through host "
        "memory; ranks may share a GPU, e.g. mpiexec -n 2 on one GPU)",
    )
    p.add_argument("--config", help="parallel configuration (JSON or YAML); the flags below override it")
    p.add_argument("--tp", type=int, help="tensor_parallel_size")
    p.add_argument("--cp", type=int, help="context_parallel_size")
    p.add_argument("--tokens-per-block", type=int, help="KV block size (cp_config and kv_cache_config)")
    p.add_argument("--max-tokens", type=int, help="KV pool size in tokens (kv_cache_config.max_tokens)")
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="prompt tokens per step (chunked prefill); default 2048 on the CPU, 512 on CUDA",
    )
    p.add_argument(
        "--wuv-before-exchange",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply W_UV before the all-to-all (Dv instead of kv_lora_rank values per head); default: on "
        "the CPU at cp = 1 only (helix.engine.default_wuv_before_exchange)",
    )
    p.add_argument(
        "--expert-tensor-parallel",
        action="store_true",
        help="split every expert over all ranks instead of distributing experts",
    )
    p.add_argument(
        "--speculative-tokens",
        type=int,
        default=0,
        metavar="K",
        help="draft K = 1..3 tokens per step with the checkpoint's MTP layer, verified in one step (0: off)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="helix generate", description=__doc__)
    add_model_arguments(p)
    p.add_argument(
        "--prompt", action="append", default=[], help="a text prompt (repeatable: one request each)"
    )
    p.add_argument(
        "--prompt-token-ids",
        action="append",
        default=[],
        type=_token_ids,
        metavar="1,2,3",
        help="a prompt as token ids (repeatable)",
    )
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument(
        "--stop", action="append", default=[], help="a stop string (repeatable; needs tokenizer.json)"
    )
    p.add_argument(
        "--stop-token-ids", type=_token_ids, default=[], metavar="7,9", help="finish on any of these"
    )
    p.add_argument(
        "--logprobs", type=int, default=None, metavar="K", help="log-probabilities of the top K (--json)"
    )
    p.add_argument(
        "--dump-logits",
        metavar="FILE.npy",
        help="save the logits of every generated step of the first request, [steps, vocab] float32",
    )
    p.add_argument("--json", action="store_true", help="rank 0 prints one JSON object as the last line")
    return p


def parallel_config_from_args(args: argparse.Namespace):
    """The ParallelConfig of --config, overridden by --tp, --cp, --tokens-per-block and --max-tokens."""
    from helix.parallel_config import ParallelConfig

    pc = ParallelConfig.from_file(args.config) if args.config else ParallelConfig()
    overrides = {
        "tensor_parallel_size": args.tp,
        "context_parallel_size": args.cp,
        "tokens_per_block": args.tokens_per_block,
        "max_tokens": args.max_tokens,
    }
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(pc, **changes) if changes else pc


def make_llm(args: argparse.Namespace, comm, *, progress: bool):
    """The helix.LLM of the flags of add_model_arguments on this job's ranks (collective)."""
    from helix.llm import LLM

    pc = parallel_config_from_args(args)
    pc.check_world_size(comm.size)
    return LLM(
        args.model,
        pc,
        dtype=args.dtype,
        comm=comm,
        max_batch_tokens=args.max_batch_tokens,
        wuv_before_exchange=args.wuv_before_exchange,
        expert_tensor_parallel=args.expert_tensor_parallel,
        progress=progress,
        device=args.device,
        cuda_comm=args.cuda_comm,
        speculative_tokens=args.speculative_tokens,
        precision=args.precision,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from helix import DeviceMemoryError
    from helix.comm import abort_job, abort_on_exception, world
    from helix.device import DeviceUnavailableError

    abort_on_exception()
    comm = world()
    try:
        return _generate(args, comm)
    except (ValueError, OSError, DeviceUnavailableError, DeviceMemoryError) as exc:
        # A bad input (configuration, checkpoint, prompt, sampling parameter) or an unusable device (none,
        # or too small for the model): its message, not a traceback.
        # Any rank may be the only one to see it (a file it cannot read), so under MPI it ends the whole job.
        prefix = f"[rank {comm.rank}/{comm.size}] " if comm.size > 1 else ""
        message = f"{prefix}helix generate: error: {exc}\n"
        if comm.size > 1:
            abort_job(message, 2)
        print(message, end="", file=sys.stderr, flush=True)
        return 2


def _generate(args: argparse.Namespace, comm) -> int:
    from helix.config import ModelConfig
    from helix.generate import SamplingParams
    from helix.llm import check_prompt_ids

    prompts: list = list(args.prompt) + list(args.prompt_token_ids)
    if not prompts:
        raise SystemExit("helix generate: give at least one --prompt or --prompt-token-ids")
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
        stop=tuple(args.stop),
        stop_token_ids=tuple(args.stop_token_ids),
        logprobs=args.logprobs,
    )
    # Token ids are checked against config.json before any weight is loaded.
    vocab_size = ModelConfig.from_pretrained(args.model).vocab_size
    for ids in args.prompt_token_ids:
        check_prompt_ids(ids, vocab_size)
    llm = make_llm(args, comm, progress=not args.json)
    pc = llm.parallel_config
    first_logits: list[np.ndarray] = []
    outputs = llm.generate(
        prompts, params, on_logits=lambda i, row: first_logits.append(row.copy()) if i == 0 else None
    )
    stats = llm.last_stats
    # Every rank holds the same outputs: each exits 1 when a request was refused (or ended otherwise early).
    failures = [
        f"request {i} {o.finish_reason}: {o.error or 'no reason given'}"
        for i, o in enumerate(outputs)
        if o.finish_reason not in ("eos", "stop", "length")
    ]
    status = 1 if failures else 0
    peak = np.array([stats.peak_kv_blocks], np.int64)
    peak_per_rank = comm.all_gather(peak).ravel() if comm.size > 1 else peak
    gpu_bytes = None
    if llm.engine.device_bytes is not None:
        held = np.array([llm.engine.device_bytes], np.int64)
        gpu_bytes = comm.all_gather(held).ravel() if comm.size > 1 else held
    if comm.rank != 0:
        return status
    for failure in failures:
        print(f"helix generate: error: {failure}", file=sys.stderr, flush=True)
    if args.dump_logits:
        vocab = llm.engine.config.vocab_size
        np.save(args.dump_logits, np.asarray(first_logits, np.float32).reshape(len(first_logits), vocab))
    ttl = stats.decode_step_ms or stats.step_ms
    if args.json:
        print(
            json.dumps(
                {
                    "outputs": [
                        {
                            "prompt_token_ids": o.prompt_token_ids,
                            "token_ids": o.token_ids,
                            "text": o.text,
                            "finish_reason": o.finish_reason,
                            "stop_reason": o.stop_reason,
                            "error": o.error,
                            "logprobs": None
                            if o.logprobs is None
                            else [
                                {"token_id": lp.token_id, "logprob": lp.logprob, "top": lp.top}
                                for lp in o.logprobs
                            ],
                        }
                        for o in outputs
                    ],
                    "ttl_ms": [round(v, 4) for v in ttl],
                    "tokens_per_s": stats.tokens_per_s,
                    "speculative": _speculative_json(stats.speculative),
                    "error": "; ".join(failures) or None,
                }
            )
        )
        return status
    for i, o in enumerate(outputs):
        shown = o.text if o.text is not None else " ".join(map(str, o.token_ids))
        reason = f"refused: {o.error}" if o.finish_reason == "refused" else o.finish_reason
        print(f"[{i}] prompt {len(o.prompt_token_ids)} tokens -> {len(o.token_ids)} tokens ({reason})")
        print(f"    {shown}")
    if ttl:
        arr = np.asarray(ttl)
        print(
            f"token-to-token latency: median {np.median(arr):.2f} ms, p90 {np.percentile(arr, 90):.2f} ms "
            f"over {len(arr)} steps; {stats.tokens_per_s:.1f} tokens/s"
        )
    if stats.speculative is not None:
        s = stats.speculative
        print(
            f"speculative k={s.k}: acceptance {s.acceptance_rate:.3f}, {s.mean_accepted_tokens:.2f} drafts "
            f"accepted per step, per draft {[round(a, 3) for a in s.draft_acceptance]}"
        )
    print(
        f"layout tp={pc.tensor_parallel_size} cp={pc.context_parallel_size}; "
        "peak KV blocks per rank (per layer): "
        f"{peak_per_rank.tolist()} of {llm.engine.num_kv_blocks}"
    )
    if gpu_bytes is not None:
        from helix import _core

        gib = ", ".join(f"{b / 2**30:.2f}" for b in gpu_bytes)
        print(f"GPU memory held per rank (GiB): [{gib}] on {_core.cuda.device_name()}")
    return status


if __name__ == "__main__":
    sys.exit(main())


def _speculative_json(s) -> dict | None:
    """SpeculativeStats as JSON (None without speculative decoding)."""
    if s is None:
        return None
    return {
        "k": s.k,
        "steps": s.steps,
        "acceptance_rate": s.acceptance_rate,
        "mean_accepted_tokens": s.mean_accepted_tokens,
        "draft_acceptance": s.draft_acceptance,
        "emitted": s.emitted,
    }
