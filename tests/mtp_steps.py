"""The MTP layer on the engine against the float64 reference (docs/speculative.md §3), the scenario shared by
the single-process test (tests/test_mtp_engine.py) and the program run under mpiexec
(tests/mpi/test_speculative.py, launched by tests/test_mpi_speculative.py).

One sequence, tokens_per_block 2 so that every chunk crosses block and (cp > 1) owner boundaries, teacher
forced with fixed drafts (random weights make the model's own choices meaningless):
  1. prefill the prompt with its hidden states; MTP rows 0..n-1 from them in one chunk;
  2. k - 1 = 2 recursive single-row MTP passes (g of the previous row, a draft), then the MTP cache is cut
     back to n rows;
  3. verify [t_n, d_1, d_2, d_3] at positions n..n+3, keep j + 1 = 2 of them (main cache cut to n + 2);
  4. the next draft chunk: MTP rows n, n+1 from the verified hidden states.
The engine's draft logits, g and hidden states match the reference at each stage, and both tables hold
exactly the accepted positions at the end (every rank: the view is global).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from failed_steps import MODEL
from helix.reference_model import ReferenceModel, truncate_cache
from helix.reference_mtp import ReferenceMTP
from helix.tiny import make_tiny_model
from tolerances import tol

PROMPT = [5, 17, 42, 99, 3, 250, 7]
DRAFTS = [11, 200, 31]  # verified as given: only positions and caches matter here
TOKENS_PER_BLOCK = 2


def make_mtp_model(path: Path) -> Path:
    make_tiny_model(path, seed=5, mtp=True, **MODEL)
    return path


def make_mtp_engine(model: Path, comm, tp: int = 1, cp: int = 1, device: str = "cpu"):
    from helix.engine import HelixEngine

    return HelixEngine(
        str(model), comm=comm, tp=tp, cp=cp, tokens_per_block=TOKENS_PER_BLOCK, max_tokens=32,
        progress=False, device=device, mtp=True,
    )  # fmt: skip


def _arrays(tokens, first: int) -> list[np.ndarray]:
    """One sequence (id 0) at positions first.., every row a logit row."""
    T = len(tokens)
    return [np.asarray(v, np.int64) for v in (tokens, range(first, first + T), [0], [0] * T, range(T))]


def _close(got: np.ndarray, expect: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, expect, **tol("mtp_engine", "float32"), err_msg=what)


def run_mtp_case(engine, model: Path) -> None:
    ref, mtp = ReferenceModel.from_pretrained(model), ReferenceMTP.from_pretrained(model)
    cache, mtp_cache = ref.new_cache(), mtp.new_cache()
    n = len(PROMPT)
    engine.add_sequence(0, reserve_tokens=n + len(DRAFTS) + 1)

    logits, hidden = engine.step(*_arrays(PROMPT, 0), hidden_rows=np.arange(n))
    expect_hidden = ref.forward_hidden(PROMPT, cache)
    _close(hidden, expect_hidden, "prompt hidden states")
    t_n = int(np.argmax(logits[-1]))
    next_tokens = PROMPT[1:] + [t_n]
    g, draft_logits = engine.mtp_step(hidden, *_arrays(next_tokens, 0))
    expect_g, expect_logits = mtp.forward(expect_hidden, next_tokens, mtp_cache)
    _close(draft_logits, expect_logits, "draft logits of the prompt chunk")
    _close(g, expect_g, "g of the prompt chunk")

    g = g[-1:]
    expect_g = expect_g[-1:]
    for i, draft in enumerate(DRAFTS[:-1]):  # the recursion: rows n, n + 1
        g, draft_logits = engine.mtp_step(g, *_arrays([draft], n + i))
        expect_g, expect_logits = mtp.forward(expect_g, [draft], mtp_cache)
        _close(draft_logits, expect_logits, f"draft logits of recursion {i}")
    engine.truncate_mtp(0, n)
    truncate_cache([mtp_cache], n)

    verify = [t_n] + DRAFTS
    logits, hidden = engine.step(*_arrays(verify, n), hidden_rows=np.arange(len(verify)))
    expect_hidden = ref.forward_hidden(verify, cache)
    _close(hidden, expect_hidden, "verify hidden states")
    engine.truncate(0, n + 2)  # d_1 accepted, one more token: positions n, n + 1 kept
    truncate_cache(cache, n + 2)

    next_tokens = [DRAFTS[0], int(np.argmax(logits[1]))]
    _, draft_logits = engine.mtp_step(hidden[:2], *_arrays(next_tokens, n))
    _, expect_logits = mtp.forward(expect_hidden[:2], next_tokens, mtp_cache)
    _close(draft_logits, expect_logits, "draft logits of the accepted chunk")

    accepted = list(range(n + 2))
    assert engine.block_table.held_positions(0).tolist() == accepted
    assert engine.mtp_block_table.held_positions(0).tolist() == accepted
    engine.free_sequence(0)
    assert engine.block_table.free_blocks == [engine.num_kv_blocks] * engine.cp
    assert engine.mtp_block_table.free_blocks == [engine.num_kv_blocks] * engine.cp
