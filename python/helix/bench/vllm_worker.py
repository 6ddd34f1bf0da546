"""The vLLM CPU side of ``python -m helix bench peer``: run by the interpreter of vLLM's own environment
(scripts/peers.sh), as a plain script, so it imports nothing from helix. Prints one JSON object (the last line
of stdout): ``{"prefill_s": {n: s}, "decode_ms": {n: ms}, "version": ...}``.

For each prompt length n (random token ids, no tokenizer, prefix caching off so that no prompt reuses
another's KV) one request of 1 + steps tokens: decode = (last token - first token) / steps from vLLM's own
per-request timestamps (RequestOutput.metrics, kept with disable_log_stats=False); prefill = the wall time of
``generate`` less that decode span (the time to first token, frontend included). One warm-up request first.
Threads: vLLM's CPU backend pins its OpenMP threads to VLLM_CPU_OMP_THREADS_BIND (cores 0..threads-1).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", default="1024,4096", help="prompt lengths (prefill, and decode context)")
    parser.add_argument("--decode-steps", type=int, default=8, help="0: no decode figure")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--kv-gib", type=int, default=4, help="VLLM_CPU_KVCACHE_SPACE")
    args = parser.parse_args()
    prompts = [int(n) for n in args.prompts.split(",") if n]
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0" if args.threads == 1 else f"0-{args.threads - 1}"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_gib))
    import vllm
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args.model,
        dtype="bfloat16",
        skip_tokenizer_init=True,
        enable_prefix_caching=False,
        max_model_len=max(prompts) + args.decode_steps + 64,
        # MLA on vLLM's CPU backend turns chunked prefill off: a prompt must fit one batch.
        max_num_batched_tokens=max(4096, max(prompts) + args.decode_steps + 64),
        disable_log_stats=False,
    )
    rng = random.Random(0)

    def run(n: int, new_tokens: int) -> tuple[float, float]:
        """(seconds to the first token, seconds from the first to the last token) of one request."""
        ids = [rng.randrange(2, args.vocab) for _ in range(n)]
        params = SamplingParams(max_tokens=new_tokens, ignore_eos=True, detokenize=False, temperature=0.0)
        t0 = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
        wall = time.perf_counter() - t0
        m = out.metrics
        if m is None or len(out.outputs[0].token_ids) != new_tokens:
            raise RuntimeError(
                f"vLLM returned no per-request metrics or {len(out.outputs[0].token_ids)} tokens"
            )
        span = m.last_token_ts - m.first_token_ts
        return wall - span, span

    run(64, 2)  # warm-up
    prefill, decode = {}, {}
    for n in prompts:
        first, span = run(n, 1 + args.decode_steps)
        prefill[n] = first
        if args.decode_steps > 0:
            decode[n] = span / args.decode_steps * 1e3
    print(json.dumps({"prefill_s": prefill, "decode_ms": decode, "version": vllm.__version__}), flush=True)


if __name__ == "__main__":
    main()
