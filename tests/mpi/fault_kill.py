"""Fault program (run under mpiexec by tests/test_faults.py): one rank SIGKILLs itself mid-decode.

Every rank decodes a long greedy request with helix.LLM; after --after tokens the rank --victim prints a
line with its rank and the wall-clock time, then sends itself SIGKILL (no cleanup, no MPI_Abort: the
closest thing to a crashed or OOM-killed process). The other ranks are then inside, or about to enter,
the next step's collectives with a dead peer; the test checks that the whole job ends quickly anyway.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import helix
from helix.comm import abort_on_exception, world


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--cp", type=int, default=2)
    ap.add_argument("--victim", type=int, default=1)
    ap.add_argument("--after", type=int, default=5)
    args = ap.parse_args()
    abort_on_exception()
    comm = world()
    pc = helix.ParallelConfig(
        tensor_parallel_size=args.tp, context_parallel_size=args.cp, tokens_per_block=4, max_tokens=4096
    )
    llm = helix.LLM(args.model, pc, comm=comm, progress=False)
    seen = 0

    def on_logits(index: int, row) -> None:
        nonlocal seen
        seen += 1
        if seen == args.after and comm.rank == args.victim:
            print(f"FAULT rank {comm.rank} pid {os.getpid()} SIGKILL at {time.time():.3f}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    params = helix.SamplingParams(max_new_tokens=3000, ignore_eos=True)
    out = llm.generate([list(range(2, 40))], params, on_logits=on_logits)[0]
    print(f"rank {comm.rank}: finished without the fault ({out.finish_reason}, {out.error})", file=sys.stderr)
    return 3


if __name__ == "__main__":
    raise SystemExit(main())
