"""One speculative step of the scheduler (docs/speculative.md §3-4): the MTP layer drafts k tokens for every
decoding request, the main model verifies them next to the other requests' prompt chunks, the speculative
sampling rule keeps a prefix, and both caches are cut back to the accepted positions.

Per request the scheduler keeps ``computed`` (= n, positions in the main cache), ``mtp_rows`` (= a, rows in
the MTP cache) and ``hidden`` [n - a, D], the main model's final hidden states of the rows the MTP cache
lacks. A step:
  1. one ``mtp_step`` over every request's rows a..n-1 (their next tokens are known: the prompt, or the
     tokens accepted last step); a decoding request's last row gives its first draft;
  2. k - 1 single-row ``mtp_step`` s (g of the previous row, the previous draft) for the later drafts; the MTP
     cache is then cut back to n rows;
  3. one engine ``step``: [t_n, d_1..d_k] at positions n..n+k for every decoding request (every row a logit
     row), prompt chunks for the others, and every row's final hidden state (the MTP layer reads them);
  4. ``speculative_accept`` per decoding request; the main cache is cut back to the accepted positions.
Every rank makes the same calls with the same logits and generators: the decisions agree everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from helix.generate import StepResult, sample
from helix.speculative import check_speculative_tokens, sampling_probs, speculative_accept

__all__ = ["SchedulerDraftHook", "SpeculativeStep"]

# (request id, global position of the drafted token, the MTP layer's draft) -> the token to verify instead:
# tests force acceptance (the known greedy continuation) or rejection (reference_mtp.DraftHook, per request).
SchedulerDraftHook = Callable[[int, int, int], int]


class SpeculativeStep:
    """Runs steps 1-4 above for the scheduler's running requests (helix.generate._Request).

    forced_acceptance alpha (benchmarks): each draft is accepted with probability alpha (until the first
    rejection), whatever the model says; the step then emits the accepted drafts and a token sampled from the
    next verify row. Random weights make natural acceptance meaningless (~0), so the cost of a step at a
    given acceptance rate is measured this way; the output is not the model's."""

    def __init__(
        self,
        engine,
        k: int,
        draft_hook: SchedulerDraftHook | None = None,
        forced_acceptance: float | None = None,
    ) -> None:
        self.engine, self.k, self.draft_hook = engine, check_speculative_tokens(k), draft_hook
        if self.k == 0:
            raise ValueError("SpeculativeStep needs speculative_tokens >= 1")
        if forced_acceptance is not None and not 0.0 <= forced_acceptance <= 1.0:
            raise ValueError(f"forced_acceptance must be in [0, 1] or None, got {forced_acceptance!r}")
        self.forced_acceptance = forced_acceptance

    def run(self, running: list, max_batch_tokens: int) -> dict:
        """One step over ``running``; returns {request: StepResult} for the requests that got tokens. A step
        that raises leaves both caches and every request as they were."""
        decoding = [r for r in running if r.computed >= len(r.prompt)]
        saved = [(r, r.mtp_rows, r.hidden) for r in running]
        try:
            drafts, q = self._draft(running, decoding)
            return self._verify(running, decoding, drafts, q, max_batch_tokens)
        except BaseException:
            for req, rows, hidden in saved:
                if self.engine.mtp_block_table.num_held(req.seq_id) > rows:
                    self.engine.truncate_mtp(req.seq_id, rows)
                req.mtp_rows, req.hidden = rows, hidden
            raise

    def _draft(self, running: list, decoding: list) -> tuple[dict, dict]:
        """Steps 1-2: {request: k drafts}, {request: [k, V] the distributions they were drawn from}."""
        eng = self.engine
        hidden, nxt, pos, seqs, qidx, rows = [], [], [], [], [], []
        for req in running:
            a, n = req.mtp_rows, req.computed
            if n == a:
                continue
            qidx += [len(seqs)] * (n - a)
            seqs.append(req.seq_id)
            hidden.append(req.hidden)  # [n - a, D]
            nxt += req.tokens[a + 1 : n + 1]
            pos += range(a, n)
            if req in decoding:
                rows.append(len(nxt) - 1)
        drafts: dict = {r: [] for r in decoding}
        q: dict = {r: [] for r in decoding}
        if not seqs:
            return drafts, q
        g, logits = eng.mtp_step(np.concatenate(hidden), *_i64(nxt, pos, seqs, qidx, rows))
        for req in running:
            req.mtp_rows, req.hidden = req.computed, None
        for i in range(self.k):
            for req, row in zip(decoding, logits, strict=True):
                self._add_draft(req, row, drafts[req], q[req])
            if i + 1 == self.k:
                break
            # Row n + i of every decoding request: g of its previous row and its last draft.
            B = len(decoding)
            last = [d[-1] for d in drafts.values()]
            rows_at = [r.computed + i for r in decoding]
            g, logits = eng.mtp_step(
                g, *_i64(last, rows_at, [r.seq_id for r in decoding], range(B), range(B))
            )
        for req in decoding:  # the recursion's rows existed only for drafting
            if self.k > 1:
                eng.truncate_mtp(req.seq_id, req.computed)
        return drafts, {r: np.stack(v) for r, v in q.items()}

    def _add_draft(self, req, logits: np.ndarray, drafts: list[int], q: list[np.ndarray]) -> None:
        q.append(sampling_probs(logits, req.params))
        token = sample(logits, req.params, req.rng)  # drawn from q[-1]
        position = req.computed + 1 + len(drafts)
        drafts.append(self.draft_hook(req.output.request_id, position, token) if self.draft_hook else token)

    def _verify(self, running: list, decoding: list, drafts: dict, q: dict, max_batch_tokens: int) -> dict:
        """Steps 3-4."""
        eng = self.engine
        tokens, positions, qidx, logit_rows, batch, counts = [], [], [], [], [], []
        budget = max_batch_tokens
        for req in running:
            n = req.computed
            chunk = [req.tokens[n]] + drafts[req] if req in drafts else req.tokens[n : n + max(budget, 0)]
            if not chunk:
                continue
            qidx += [len(batch)] * len(chunk)
            batch.append(req)
            counts.append(len(chunk))
            if req in drafts:  # every verify row; a prompt chunk's last row once the prompt is complete
                logit_rows += range(len(tokens), len(tokens) + len(chunk))
            elif n + len(chunk) == len(req.prompt):
                logit_rows.append(len(tokens) + len(chunk) - 1)
            tokens += chunk
            positions += range(n, n + len(chunk))
            budget -= len(chunk)
        T = len(tokens)
        seqs = [r.seq_id for r in batch]
        # Every row's hidden state (the MTP layer reads them all), the logits of the rows that choose tokens.
        logits, hidden = eng.step(*_i64(tokens, positions, seqs, qidx, logit_rows), hidden_rows=np.arange(T))
        out, first, logit_at = {}, 0, 0
        for req, m in zip(batch, counts, strict=True):
            h = hidden[first : first + m]
            first += m
            n = req.computed
            if req in drafts:
                rows = logits[logit_at : logit_at + m]
                logit_at += m
                emitted = self._accept(req, rows, drafts[req], q[req])
                keep = len(emitted)  # positions n .. n + keep - 1 hold t_n and the accepted drafts
                eng.truncate(req.seq_id, n + keep)
                out[req] = StepResult(emitted, rows[:keep], accepted=keep - 1)
            else:
                keep = m
                if n + m == len(req.prompt):
                    row = logits[logit_at]
                    logit_at += 1
                    out[req] = StepResult([sample(row, req.params, req.rng)], row[None])
            req.hidden = h[:keep] if req.hidden is None else np.concatenate([req.hidden, h[:keep]])
            req.computed = n + keep
        return out

    def _accept(self, req, rows: np.ndarray, drafts: list[int], q: np.ndarray) -> list[int]:
        """The tokens a verify step emits: speculative_accept on the verify rows [k + 1, V], or the
        forced_acceptance draw."""
        alpha = self.forced_acceptance
        if alpha is None:
            p = np.stack([sampling_probs(row, req.params) for row in rows])
            return speculative_accept(p, q, drafts, req.rng)
        j = 0
        while j < self.k and req.rng.random() < alpha:
            j += 1
        return drafts[:j] + [sample(rows[j], req.params, req.rng)]


def _i64(*arrays) -> list[np.ndarray]:
    return [np.asarray(list(a), np.int64) for a in arrays]
