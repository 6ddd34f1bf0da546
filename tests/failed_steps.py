"""A failed engine step leaves nothing behind (DESIGN.md §4): the scenario shared by the single-process test
(tests/test_engine_steps.py, CPU engine and the CUDA engine) and the MPI programs
(tests/test_mpi_failed_steps.py, cp2 and tp2cp2).

Two sequences are prefilled (positions 0-5 and 0-2); then every bad step of BAD_STEPS is tried, each a
variation of VALID (the next token of both sequences). Each must raise the expected error and change
nothing observable in the block table (every sequence's held positions, this rank's slots and blocks, free
and unreserved blocks of every CP rank); afterwards VALID must give bitwise the logits a fresh engine gives
for the same prefill and VALID. Under MPI the caller also checks that every rank raised the same error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from helix.checkpoint import Checkpoint
from helix.tiny import make_tiny_model, write_safetensors

# Small enough for the SIMT emulator and 4 ranks on 2 cores; heads, experts and FFN widths divide by 4.
MODEL = dict(
    vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
    qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
)  # fmt: skip
POISON = 7  # a token whose embedding row is NaN: a step that feeds it fails after its KV slots were committed
TOKENS_PER_BLOCK = 2
MAX_TOKENS = 32  # 16 blocks of 2 tokens, spread over the CP ranks


def make_model(path: Path) -> Path:
    """The test model, with token POISON's embedding row set to NaN."""
    make_tiny_model(path, seed=3, **MODEL)
    with Checkpoint.open(path) as ckpt:
        tensors = {n: ckpt.get(n) for n in ckpt.names()}
    tensors["model.embed_tokens.weight"][POISON] = np.nan
    write_safetensors(path / "model.safetensors", tensors)
    return path


@dataclass
class Step:
    tokens: list[int]
    positions: list[int]
    seq_ids: list[int]
    q_seq_index: list[int]
    logit_rows: list[int]
    dtypes: dict[str, type] = field(default_factory=dict)  # array name -> dtype other than int64

    def arrays(self) -> list[np.ndarray]:
        names = ("tokens", "positions", "seq_ids", "q_seq_index", "logit_rows")
        return [np.asarray(getattr(self, n), self.dtypes.get(n, np.int64)) for n in names]


PREFILL = Step([3, 4, 5, 6, 8, 9, 10, 11, 12], [0, 1, 2, 3, 4, 5, 0, 1, 2], [0, 1], [0] * 6 + [1] * 3, [5, 8])
VALID = Step([13, 14], [6, 3], [0, 1], [0, 1], [0, 1])


def _one_rank_full(engine) -> Step:
    """Sequence 1 gets positions that only the last CP rank owns, one block more than that rank has free:
    with cp > 1 the other ranks would store none of them, and must refuse the step all the same."""
    table = engine.block_table
    last, tpb = table.cp_size - 1, table.tokens_per_block
    count = (table.free_blocks[last] + 1) * tpb
    owned = [p for p in range(3, 3 + 4 * count * table.cp_size) if (p // tpb) % table.cp_size == last][:count]
    return Step([20] * count, owned, [1], [0] * count, [count - 1])


def _replace(**changes) -> Callable[[object], Step]:
    return lambda engine: Step(**{**VALID.__dict__, **changes})


# (name, the bad step given the engine, error type name, regular expression its message must match; <last> and
# <cp> stand for the last CP rank and the CP size)
BAD_STEPS: list[tuple[str, Callable[[object], Step], str, str]] = [
    (
        "unknown sequence",
        _replace(seq_ids=[0, 7]),
        "ArgumentError",
        r"^argument 'seq_ids'\[1\] = 7 is not a sequence of the engine \(add_sequence first\)$",
    ),
    (
        "sequence twice",
        _replace(seq_ids=[0, 0]),
        "ArgumentError",
        r"^argument 'seq_ids'\[1\] = 0 repeats seq_ids\[0\]$",
    ),
    (
        "position twice in one step",
        _replace(tokens=[13, 14, 15], positions=[6, 3, 6], q_seq_index=[0, 1, 0], logit_rows=[2]),
        "ArgumentError",
        r"^argument 'positions'\[2\] = 6 repeats positions\[0\] for sequence 0 in one step$",
    ),
    # Sequence 0's token is valid and comes first: the old engine appended it to layer 0, then failed for
    # good.
    (
        "position already held",
        _replace(positions=[6, 2]),
        "ArgumentError",
        r"^argument 'positions'\[1\] = 2 is already held for sequence 1$",
    ),
    (
        "pool full on one CP rank",
        _one_rank_full,
        "KVCacheFullError",
        r"^KV cache full: the step needs \d+ more block\(s\) on CP rank <last> of <cp>, which has only",
    ),
    (
        "token outside the vocabulary",
        _replace(tokens=[13, 256]),
        "ArgumentError",
        r"^argument 'tokens'\[1\] = 256 is outside the vocabulary \[0, 256\)$",
    ),
    (
        "negative position",
        _replace(positions=[6, -1]),
        "ArgumentError",
        r"^argument 'positions'\[1\] = -1 is negative$",
    ),
    (
        "q_seq_index outside the batch",
        _replace(q_seq_index=[0, 2]),
        "ArgumentError",
        r"^argument 'q_seq_index'\[1\] = 2 is outside \[0, 2\)$",
    ),
    ("positions shorter than tokens", _replace(positions=[6]), "ArgumentError", r"'positions'"),
    ("q_seq_index shorter than tokens", _replace(q_seq_index=[0]), "ArgumentError", r"'q_seq_index'"),
    (
        "logit row outside the step",
        _replace(logit_rows=[0, 2]),
        "ArgumentError",
        r"^argument 'logit_rows'\[1\] = 2 is outside \[0, 2\)$",
    ),
    ("int32 positions", _replace(dtypes={"positions": np.int32}), "ArgumentError", r"'positions'.*int64"),
    ("2-D seq_ids", _replace(seq_ids=[[0, 1]]), "ArgumentError", r"'seq_ids'"),
    (
        "empty step",
        _replace(tokens=[], positions=[], seq_ids=[], q_seq_index=[], logit_rows=[]),
        "ArgumentError",
        r"^argument 'tokens' is empty$",
    ),
    # Valid inputs, but a NaN from POISON's embedding: the step fails after its commit, which is taken back.
    ("non-finite values", _replace(tokens=[13, POISON]), "HelixError", r"non-finite .*\(NaN or Inf\)"),
]


def run_failed_steps(model: Path, spec_dir: Path, tp: int, cp: int, device: str, cuda_comm: str = "nccl"):
    """Runs tests/mpi/test_failed_steps.py on tp * cp ranks (mpi_launch.run_mpi); returns its MpiResult."""
    import json

    from mpi_launch import run_mpi

    spec = spec_dir / "failed_steps.json"
    layout = {"tp": tp, "cp": cp, "device": device, "cuda_comm": cuda_comm}
    spec.write_text(json.dumps({"model": str(model), **layout}))
    return run_mpi(
        tp * cp,
        ["-m", "pytest", "tests/mpi/test_failed_steps.py", "-q", "-p", "no:cacheprovider", "-x"],
        timeout=180,
        env={"HELIX_FAILED_STEPS_SPEC": str(spec)},
    )


def make_engine(model: Path, comm, tp: int = 1, cp: int = 1, device: str = "cpu", cuda_comm: str = "nccl"):
    from helix.engine import HelixEngine

    return HelixEngine(
        str(model),
        comm=comm,
        tp=tp,
        cp=cp,
        tokens_per_block=TOKENS_PER_BLOCK,
        max_tokens=MAX_TOKENS,
        progress=False,
        device=device,
        cuda_comm=cuda_comm,
    )


def prefill(engine) -> None:
    for seq in PREFILL.seq_ids:
        engine.add_sequence(seq)
    engine.step(*PREFILL.arrays())


def snapshot(engine) -> dict:
    """Everything observable of this rank's KV bookkeeping."""
    t = engine.block_table
    seqs = {
        s: (t.held_positions(s).tolist(), t.positions(s).tolist(), t.block_table(s).tolist())
        for s in t.sequence_ids()
    }
    return {
        "sequences": seqs,
        "free": t.free_blocks,
        "unreserved": t.unreserved_blocks,
        "num_free_blocks": engine.num_free_blocks,
    }


def error_of(engine, step: Step) -> tuple[str, str]:
    """(type name, message) of the error the step raises; ("", "") when it raises none."""
    from helix import _core

    try:
        engine.step(*step.arrays())
    except _core.HelixError as exc:
        return type(exc).__name__, str(exc)
    return "", ""


def try_bad_steps(engine) -> list[tuple[str, str, str]]:
    """Runs every bad step on a prefilled engine; checks each error and that nothing changed. Returns
    (name, type name, message) per bad step."""
    import re

    seen = []
    cp = engine.block_table.cp_size
    for name, make, kind, pattern in BAD_STEPS:
        pattern = pattern.replace("<last>", str(cp - 1)).replace("<cp>", str(cp))
        before = snapshot(engine)
        got_kind, message = error_of(engine, make(engine))
        assert got_kind == kind, f"{name}: expected {kind}, got {got_kind or 'no error'}: {message}"
        assert re.search(pattern, message), f"{name}: message {message!r} does not match {pattern!r}"
        assert snapshot(engine) == before, f"{name}: the failed step changed the KV bookkeeping"
        seen.append((name, got_kind, message))
    return seen
