"""KV hand-off through a file across jobs of different layouts (run under mpiexec by tests/test_disagg_kv.py).

export: decode a greedy request for --after tokens (so it is mid-decode, a running request), write its KV
with LLM.export_kv, abort it. import: LLM.import_kv the file into this job's layout, decode on to
--max-new-tokens, and check the tokens against this job's own decode of the whole request from scratch.
Rank 0 prints one JSON line; any mismatch raises (the job then fails as a whole).
"""

from __future__ import annotations

import argparse
import json

import helix
from helix.comm import abort_on_exception

PROMPT = [(5 * i + 7) % 990 + 6 for i in range(23)]


def main() -> None:
    abort_on_exception()
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["export", "import"])
    p.add_argument("--model", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--tokens-per-block", type=int, required=True)
    p.add_argument("--after", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=10)
    args = p.parse_args()
    pc = helix.ParallelConfig(args.tp, args.cp, tokens_per_block=args.tokens_per_block, max_tokens=512)
    llm = helix.LLM(args.model, pc, progress=False)
    params = helix.SamplingParams(max_new_tokens=args.max_new_tokens, ignore_eos=True)
    if args.mode == "export":
        rid = llm.add_request(PROMPT, params)
        out = None
        while out is None or len(out.token_ids) < args.after:
            out = {o.request_id: o for o in llm.step()}.get(rid, out)
        llm.export_kv(rid, args.file)
        llm.abort_request(rid)
        result = {"token_ids": out.token_ids}
    else:
        rid = llm.import_kv(args.file, params)
        got = None
        while llm.has_unfinished_requests():
            got = {o.request_id: o for o in llm.step()}.get(rid, got)
        free = llm.engine.num_free_blocks
        ref = llm.generate([PROMPT], params)[0].token_ids
        if got.token_ids != ref:
            raise AssertionError(f"imported {got.token_ids} != decoded from scratch {ref}")
        if free != llm.engine.num_kv_blocks:
            raise AssertionError(f"{llm.engine.num_kv_blocks - free} KV blocks still held after the import")
        result = {"token_ids": got.token_ids}
    if llm.engine.rank == 0:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
