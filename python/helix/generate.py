"""The decode loop: continuous batching of requests over the Helix engine, and sampling.

The scheduler is incremental: ``add`` queues a request, ``step`` admits waiting requests and runs one engine
step over the running ones, ``abort`` drops one. Every rank makes the same calls in the same order and
sees the same logits (the engine gathers them), so every scheduling and sampling decision is identical
across ranks without extra communication.
KV blocks are reserved per CP rank for a request's whole length (prompt + max_new_tokens) when it is
admitted (the engine's block table keeps the reservations and answers what admission needs): a running
request never runs out of KV blocks; one that can never fit is refused with a reason.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from helix.speculative import SpeculativeStats
    from helix.speculative_step import SchedulerDraftHook

__all__ = [
    "SamplingParams",
    "RequestOutput",
    "TokenLogprobs",
    "GenerationStats",
    "Scheduler",
    "StepResult",
    "sample",
    "token_logprobs",
]


@dataclass
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one (needs a tokenizer)
    stop_token_ids: tuple[int, ...] = ()  # finish after sampling one of these (kept in token_ids)
    logprobs: int | None = None  # None: none; k: the sampled token's log-probability and the top k

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        self.stop_token_ids = tuple(self.stop_token_ids)
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        if self.logprobs is not None and (
            not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool) or self.logprobs < 0
        ):
            raise ValueError(f"logprobs must be None or a non-negative integer, got {self.logprobs!r}")


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probabilities (natural log, of the model's distribution before temperature / top-k / top-p) at
    one generated position: the sampled token's, and the most likely tokens', most likely first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob) of the SamplingParams.logprobs most likely

    def to_json(self) -> list:
        """[token_id, logprob, [[token id, logprob], ...]] (what a hand-off carries)."""
        return [self.token_id, self.logprob, [list(t) for t in self.top]]

    @staticmethod
    def from_json(x: list) -> TokenLogprobs:
        token_id, logprob, top = x
        return TokenLogprobs(int(token_id), float(logprob), tuple((int(t), float(v)) for t, v in top))


@dataclass
class RequestOutput:
    """One request's result, updated in place as it decodes (the same object at every step)."""

    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    # The decoded tokens (with a tokenizer.json): the text so far, less an end that may begin a stop string;
    # all of it, up to any stop string, once finished.
    text: str | None = None
    # None while running; "eos", "stop" (a stop string or stop token), "length", "refused" or "aborted"
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that finished it
    error: str | None = None  # why a request was refused
    request_id: int = -1
    logprobs: list[TokenLogprobs] | None = None  # one per token when SamplingParams.logprobs is set

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class GenerationStats:
    step_ms: list[float] = field(default_factory=list)  # wall time of every engine step
    decode_step_ms: list[float] = field(default_factory=list)  # steps that only decoded (token-to-token)
    generated_tokens: int = 0
    wall_s: float = 0.0  # time spent in Scheduler.step (scheduling, engine step, sampling)
    peak_kv_blocks: int = 0  # most KV blocks (per layer) this rank held at once
    speculative: SpeculativeStats | None = None  # with speculative_tokens: acceptance counts

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Index i with probability weights[i] / sum(weights) (one uniform draw)."""
    c = np.cumsum(weights)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(c) - 1))


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy for temperature 0, else temperature / top-k / top-p sampling over logits [vocab].

    top-k keeps the k largest logits; top-p then keeps the smallest prefix (by decreasing probability,
    renormalized after top-k) whose mass reaches top_p. Linear in the vocabulary: only the candidates are
    sorted (a full sort of DeepSeek-V3's 129280 logits costs ~40 ms per token in NumPy).
    """
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64) / params.temperature
    v = z.shape[0]
    k = params.top_k if 0 < params.top_k < v else v
    z_max = z.max()
    if k == v and params.top_p >= 1.0:
        return _draw(np.exp(z - z_max), rng)
    if k < v:
        cand = np.argpartition(-z, k - 1)[:k]
        total = np.exp(z[cand] - z_max).sum()
    else:
        # top-p alone: the nucleus is a prefix of the sorted candidates; grow them until it fits.
        total = np.exp(z - z_max).sum()
        cand, m = np.arange(v), 256
        while m < v // 4:
            top = np.argpartition(-z, m - 1)[:m]
            if np.exp(z[top] - z_max).sum() >= params.top_p * total:
                cand = top
                break
            m *= 8
    order = cand[np.argsort(-z[cand])]
    p = np.exp(z[order] - z_max) / total
    if params.top_p < 1.0:
        keep = min(len(order), int(np.searchsorted(np.cumsum(p), params.top_p) + 1))
        order, p = order[:keep], p[:keep]
    return int(order[_draw(p, rng)])


def token_logprobs(logits: np.ndarray, token: int, k: int) -> TokenLogprobs:
    """The log-softmax of logits [vocab] (float64) at token, and the k largest (most likely first)."""
    z = np.asarray(logits, dtype=np.float64)
    z_max = z.max()
    log_total = z_max + np.log(np.exp(z - z_max).sum())
    k = min(k, z.shape[0])
    top = np.argpartition(-z, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
    top = top[np.argsort(-z[top], kind="stable")]
    pairs = tuple((int(t), float(z[t] - log_total)) for t in top)
    return TokenLogprobs(int(token), float(z[token] - log_total), pairs)


@dataclass
class StepResult:
    """What one request got from an engine step: its new tokens, the logits [m, V] each was chosen from,
    and, for a speculative verify step, how many drafts it accepted (None otherwise)."""

    tokens: list[int]
    logits: np.ndarray
    accepted: int | None = None


@dataclass(eq=False)  # identity: requests are found in the queues by object
class _Request:
    prompt: list[int]
    params: SamplingParams
    rng: np.random.Generator
    output: RequestOutput
    kv_tokens: int  # positions reserved in the KV cache: prompt + max_new_tokens
    seq_id: int = -1  # the engine's sequence id once admitted
    computed: int = 0  # tokens whose KV is in the cache
    # Speculative decoding (helix.speculative_step): rows in the MTP layer's cache, and the main model's
    # final hidden states [computed - mtp_rows, D] of the rows it lacks (None when there are none).
    mtp_rows: int = 0
    hidden: np.ndarray | None = None

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output.token_ids


class Scheduler:
    """Continuous batching of requests on an engine (see helix.engine.HelixEngine).

    Requests are admitted in arrival order as soon as every CP rank has room for the whole request;
    prompts are prefilled in chunks within max_batch_tokens per step, alongside the decoding requests.
    Under MPI every rank must call add / step / abort identically (same arguments, same order): the
    decisions are then the same everywhere without communication.

    speculative_tokens k >= 1 (an engine built with mtp=True): every decoding request drafts k tokens with
    the MTP layer and verifies them in one step (helix.speculative_step); KV reservations grow by k.
    draft_hook replaces drafts (tests: forced acceptance or rejection); forced_acceptance alpha replaces the
    acceptance rule by Bernoulli(alpha) draws (benchmarks; see helix.speculative_step.SpeculativeStep).
    """

    def __init__(
        self,
        engine,
        eos_token_ids: tuple[int, ...],
        max_batch_tokens: int = 512,
        speculative_tokens: int = 0,
        draft_hook: SchedulerDraftHook | None = None,
        forced_acceptance: float | None = None,
    ) -> None:
        self.engine = engine
        self.eos = set(eos_token_ids)
        self.max_batch_tokens = max_batch_tokens
        self.speculative = None
        if speculative_tokens:
            from helix.speculative_step import SpeculativeStep

            self.speculative = SpeculativeStep(engine, speculative_tokens, draft_hook, forced_acceptance)
        self.stats = self._new_stats()  # since construction or the last reset_stats()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._live: dict[int, _Request] = {}  # waiting and running requests by id
        self._refused: list[RequestOutput] = []  # refused at add, reported by the next step
        # KV hand-off (helix.disagg): requests whose KV is on its way in (their blocks reserved), and the
        # finished requests whose sequences are kept for another engine to read until released.
        self._importing: dict[int, _Request] = {}
        self.keep_kv: set[int] = set()  # request ids whose sequence outlives the request (until release)
        self._kept: dict[int, tuple[int, RequestOutput]] = {}  # request id -> (seq id, output), kept
        self._next_id = 0
        self._next_seq = 0

    def _kv_tokens(self, prompt: list[int], params: SamplingParams) -> int:
        """Positions a request reserves: its prompt, its new tokens and, speculating, the k positions a verify
        chunk writes past the final length."""
        return len(prompt) + params.max_new_tokens + (self.speculative.k if self.speculative else 0)

    def add(self, prompt: list[int], params: SamplingParams, seed: int) -> int:
        """Queues a request; returns its id. One that can never fit (or is empty) is refused: its output,
        finish_reason "refused" with the reason in error, comes out of the next step()."""
        eng, tpb = self.engine, self.engine.tokens_per_block
        rid = self._next_id
        self._next_id += 1
        out = RequestOutput(prompt_token_ids=list(prompt), request_id=rid)
        kv_tokens = self._kv_tokens(prompt, params)
        need = eng.block_table.blocks_for_tokens(kv_tokens)
        if not prompt:
            out.finish_reason, out.error = "refused", "empty prompt"
        elif any(n > eng.num_kv_blocks for n in need):
            out.finish_reason = "refused"
            out.error = (
                f"request {rid} needs {max(need)} KV blocks on one CP rank for {len(prompt)} prompt + "
                f"{kv_tokens - len(prompt)} new tokens, but each rank's pool has {eng.num_kv_blocks} blocks "
                f"of {tpb} tokens (raise kv_cache_config.max_tokens or the CP size)"
            )
        if out.finished:
            self._refused.append(out)
        else:
            req = _Request(list(prompt), params, np.random.default_rng(seed), out, kv_tokens)
            self._waiting.append(req)
            self._live[rid] = req
        return rid

    def add_filled(self, prompt: list[int], first_token: int, params: SamplingParams, seed: int) -> int:
        """Benchmarks: adds a running request whose prompt is in the KV cache without a prefill (too slow for
        long contexts on a CPU): the engine's fill_random writes random rows for the prompt's positions (and,
        with speculative_tokens, the MTP rows [0, len(prompt) - 1), with a random final hidden state [1, D]
        for the last one), and first_token is its first generated token. Decoding then costs what it would
        after a real prefill. KVCacheFullError when its blocks are not free (nothing changes)."""
        if not prompt:
            raise ValueError("add_filled needs a non-empty prompt")
        n, k = len(prompt), self.speculative.k if self.speculative else 0
        kv_tokens = self._kv_tokens(prompt, params)
        seq = self._next_seq
        self.engine.add_sequence(seq, reserve_tokens=kv_tokens)
        try:
            self.engine.fill_random(seq, n, seed=seed, mtp_rows=n - 1 if k else 0)
        except BaseException:
            self.engine.free_sequence(seq)
            raise
        self._next_seq += 1
        rid = self._next_id
        self._next_id += 1
        out = RequestOutput(prompt_token_ids=list(prompt), token_ids=[first_token], request_id=rid)
        req = _Request(list(prompt), params, np.random.default_rng(seed), out, kv_tokens, seq, computed=n)
        if k:
            req.mtp_rows = n - 1
            req.hidden = np.random.default_rng(seed).standard_normal((1, self.engine.config.hidden_size))
            req.hidden = req.hidden.astype(np.float32)
        self._running.append(req)
        self._live[rid] = req
        return rid

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_unfinished(self) -> bool:
        """Whether a request is waiting, running, or refused and not yet reported by step()."""
        return bool(self._live or self._refused)

    def abort(self, request_id: int) -> RequestOutput | None:
        """Drops a waiting or running request and frees its KV blocks; returns its output (finish_reason
        "aborted", the tokens so far), or None when it had already finished. It is not reported by step()."""
        if not 0 <= request_id < self._next_id:
            raise KeyError(f"no request {request_id} was added")
        req = self._live.pop(request_id, None)
        if req is None:
            return None
        self.keep_kv.discard(request_id)  # an aborted request's KV is not kept
        if req in self._waiting:
            self._waiting.remove(req)
        elif self._importing.pop(request_id, None) is not None:
            self.engine.free_sequence(req.seq_id)
        else:
            self._retire(req)
        req.output.finish_reason = "aborted"
        return req.output

    def reset_stats(self) -> GenerationStats:
        """Starts new statistics; returns the previous ones."""
        old, self.stats = self.stats, self._new_stats()
        return old

    def _new_stats(self) -> GenerationStats:
        if self.speculative is None:
            return GenerationStats()
        from helix.speculative import SpeculativeStats

        return GenerationStats(speculative=SpeculativeStats(self.speculative.k))

    def step(self, on_logits: Callable[[int, np.ndarray], None] | None = None) -> list[RequestOutput]:
        """Admits waiting requests while blocks allow, then runs one engine step: a prompt chunk or the next
        token of every running request. Returns the output of every request that changed: a new token
        (output.finished tells whether it was the last) or refused since the last step; [] when there was
        nothing to do. on_logits(request_id, logits[vocab]) is called before every token is sampled."""
        changed, self._refused = self._refused, []
        t_start = time.perf_counter()
        eng, stats = self.engine, self.stats
        while self._waiting and eng.block_table.can_admit(self._waiting[0].kv_tokens):
            req = self._waiting[0]
            eng.add_sequence(self._next_seq, reserve_tokens=req.kv_tokens)
            self._waiting.popleft()
            req.seq_id = self._next_seq
            self._next_seq += 1
            self._running.append(req)
        if not self._running:
            return changed
        t0 = time.perf_counter()
        if self.speculative is not None:
            results = self.speculative.run(self._running, self.max_batch_tokens)
        else:
            results = self._plain_step()
        dt = (time.perf_counter() - t0) * 1e3
        stats.step_ms.append(dt)
        stats.peak_kv_blocks = max(stats.peak_kv_blocks, eng.num_kv_blocks - eng.num_free_blocks)
        if all(r.computed > len(r.prompt) for r in self._running) and len(results) == len(self._running):
            stats.decode_step_ms.append(dt)
        for req, result in results.items():
            kept = self._emit(req, result, on_logits)
            if result.accepted is not None:
                stats.speculative.record(accepted=result.accepted, emitted=kept)
            changed.append(req.output)
        for req in [r for r in self._running if r.output.finished]:
            del self._live[req.output.request_id]
            self._retire(req)
        stats.wall_s += time.perf_counter() - t_start
        return changed

    def _plain_step(self) -> dict[_Request, StepResult]:
        """One engine step: a prompt chunk (within max_batch_tokens) or the next token of every running
        request; a token for each request whose prompt is complete."""
        tokens, positions, q_index, logit_rows, owners = [], [], [], [], []
        budget = self.max_batch_tokens
        batch, counts = [], []  # the requests of the step and how many of their tokens it feeds
        for req in self._running:
            todo = req.tokens[req.computed :]
            n = min(len(todo), budget) if req.computed < len(req.prompt) else 1
            if n <= 0:
                continue
            b = len(batch)
            batch.append(req)
            tokens += todo[:n]
            positions += range(req.computed, req.computed + n)
            q_index += [b] * n
            if req.computed + n == len(req.tokens):
                logit_rows.append(len(tokens) - 1)
                owners.append(req)
            budget -= n
            counts.append(n)
        logits = self.engine.step(
            np.asarray(tokens, np.int64),
            np.asarray(positions, np.int64),
            np.asarray([r.seq_id for r in batch], np.int64),
            np.asarray(q_index, np.int64),
            np.asarray(logit_rows, np.int64),
        )
        for req, n in zip(batch, counts, strict=True):  # only now: a step that raised computed nothing
            req.computed += n
        return {
            req: StepResult([sample(row, req.params, req.rng)], row[None])
            for row, req in zip(logits, owners, strict=True)
        }

    def _emit(self, req: _Request, result: StepResult, on_logits) -> int:
        """Appends a step's tokens to the request until one finishes it; returns how many it kept."""
        out = req.output
        for kept, (tok, row) in enumerate(zip(result.tokens, result.logits, strict=True), start=1):
            if on_logits is not None:
                on_logits(out.request_id, row)
            out.token_ids.append(tok)
            if req.params.logprobs is not None:
                out.logprobs = out.logprobs if out.logprobs is not None else []
                out.logprobs.append(token_logprobs(row, tok, req.params.logprobs))
            self.stats.generated_tokens += 1
            if tok in self.eos and not req.params.ignore_eos:
                out.finish_reason = "eos"
            elif tok in req.params.stop_token_ids:
                out.finish_reason, out.stop_reason = "stop", tok
            elif len(out.token_ids) >= req.params.max_new_tokens:
                out.finish_reason = "length"
            if out.finished:
                return kept
        return len(result.tokens)

    def _retire(self, req: _Request) -> None:
        """Takes a running request off the batch and returns its sequence and reserved blocks (or keeps
        them, for a request in keep_kv, until release)."""
        self._running.remove(req)
        rid = req.output.request_id
        if rid in self.keep_kv:
            self.keep_kv.discard(rid)
            self._kept[rid] = (req.seq_id, req.output)
        else:
            self.engine.free_sequence(req.seq_id)

    # ---- KV hand-off (helix.disagg): every rank calls these identically, as add / step / abort

    def kv_sequence(self, request_id: int) -> tuple[int, RequestOutput]:
        """(seq id, output) of a running request or a finished one kept by keep_kv. Its sequence holds the
        KV of positions [0, len(prompt) + len(token_ids) - 1): the last token is not yet fed."""
        if request_id in self._kept:
            return self._kept[request_id]
        req = self._live.get(request_id)
        if req is None or req not in self._running or not req.output.token_ids:
            raise ValueError(f"request {request_id} is not running with its prompt's KV complete here")
        return req.seq_id, req.output

    def release(self, request_id: int) -> None:
        """Frees the sequence kept for a finished request in keep_kv (KeyError if none is kept)."""
        self.engine.free_sequence(self._kept.pop(request_id)[0])

    def begin_import(
        self,
        prompt: list[int],
        token_ids: list[int],
        params: SamplingParams,
        seed: int,
        logprobs: list[TokenLogprobs] | None = None,
    ) -> int:
        """Registers a request whose KV (positions [0, len(prompt) + len(token_ids) - 1)) was computed by
        another engine, as were its token_ids; reserves its blocks on every CP rank now (KVCacheFullError
        when they are not free, and nothing changes). It joins the batch at finish_import; abort drops it.
        The sampler continues where the other engine's left off (same seed, same draws). With
        params.logprobs, logprobs are those of token_ids (one each), so that the output has one per token."""
        if self.speculative is not None:
            raise ValueError(
                "the KV hand-off carries no MTP-layer cache: an importing scheduler cannot decode "
                "speculatively (speculative_tokens = 0 on the generation side)"
            )
        if not prompt or not token_ids or len(token_ids) >= params.max_new_tokens:
            raise ValueError(
                f"an imported request needs a prompt and 1 to max_new_tokens - 1 = "
                f"{params.max_new_tokens - 1} generated tokens, got {len(prompt)} and {len(token_ids)}"
            )
        if params.logprobs is not None and (logprobs is None or len(logprobs) != len(token_ids)):
            raise ValueError(
                f"logprobs={params.logprobs} needs the log-probabilities of the tokens generated before the "
                f"hand-off ({len(token_ids)}), got {'none' if logprobs is None else len(logprobs)}"
            )
        kv_tokens = len(prompt) + params.max_new_tokens
        self.engine.add_sequence(self._next_seq, reserve_tokens=kv_tokens)
        rid = self._next_id
        self._next_id += 1
        out = RequestOutput(prompt_token_ids=list(prompt), token_ids=list(token_ids), request_id=rid)
        if params.logprobs is not None:
            out.logprobs = list(logprobs)
        req = _Request(list(prompt), params, np.random.default_rng(seed), out, kv_tokens, self._next_seq)
        self._next_seq += 1
        req.computed = len(prompt) + len(token_ids) - 1
        if params.temperature > 0.0:  # one uniform draw per sampled token (see sample)
            req.rng.random(len(token_ids))
        self._importing[rid] = req
        self._live[rid] = req
        return rid

    def finish_import(self, request_id: int, rows: np.ndarray) -> RequestOutput:
        """Writes this rank's rows [num_layers, n, D] of the request's KV (ascending positions, the block
        rule) into its sequence as one step, and adds it to the running batch."""
        req = self._importing[request_id]
        self.engine.import_kv(req.seq_id, req.computed, rows)
        del self._importing[request_id]
        self._running.append(req)
        return req.output
