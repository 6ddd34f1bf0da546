"""The Python API: ``helix.LLM(model_dir, parallel_config).generate(prompts, helix.SamplingParams(...))``,
or request by request: ``add_request`` / ``step`` / ``has_unfinished_requests`` / ``abort_request``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from helix.detokenize import IncrementalDetokenizer
from helix.engine import HelixEngine
from helix.generate import GenerationStats, RequestOutput, SamplingParams, Scheduler, TokenLogprobs
from helix.parallel_config import ParallelConfig
from helix.precision import apply_precision, check_precision
from helix.speculative import check_speculative_tokens

__all__ = ["LLM", "check_prompt_ids", "default_max_batch_tokens"]

Prompt = str | Sequence[int]


def default_max_batch_tokens(device: str) -> int:
    """Tokens per engine step (the prompt chunk) when the caller names none: 2048 on the CPU, where prompt
    chunks take the expanded form of attention, which up-projects the keys it reads once per chunk (a 4K
    prompt in chunks of 2048 re-up-projects 3x fewer keys than in chunks of 512: 1.22x its CPU time on Zen 4,
    docs/performance.md 9.4, for ~0.6 GB more peak RSS with the bench model); 512 on CUDA (always absorbed;
    its workspace must fit the device). A step with a long chunk also delays the running requests' next token
    (chunked prefill's usual trade; pass a smaller max_batch_tokens when inter-token latency matters more)."""
    return 2048 if device == "cpu" else 512


def check_prompt_ids(prompt: Sequence[int], vocab_size: int) -> list[int]:
    """The prompt as a list of ints; ValueError naming the ids outside [0, vocab_size)."""
    ids = [int(t) for t in prompt]
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
    return ids


class LLM:
    """A DeepSeek-V3-architecture model decoded with Helix parallelism across this job's ranks.

    Two ways to decode, one code path: ``generate`` takes a batch and returns when it is done; the
    incremental API takes requests as they arrive, as a server loop would::

        rid = llm.add_request(prompt, params)       # queued; admitted when KV blocks allow
        while llm.has_unfinished_requests():
            for out in llm.step():                   # one engine step over the running requests
                ...                                  # out.token_ids so far; out.finished when done

    Under MPI, add_request, step, abort_request and generate are collective: every rank must make the same
    calls with the same arguments in the same order (the scheduler then decides identically everywhere).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        parallel_config: ParallelConfig | None = None,
        *,
        dtype: str = "float32",
        comm=None,
        max_batch_tokens: int | None = None,
        wuv_before_exchange: bool | None = None,
        expert_tensor_parallel: bool = False,
        progress: bool = True,
        device: str = "cpu",
        cuda_comm: str = "nccl",
        speculative_tokens: int = 0,
        precision: str = "float32",
    ) -> None:
        """device: "cpu", or "cuda"; cuda_comm: "nccl" (one GPU per local rank) or "host" (MPI through host
        memory; ranks may share a GPU). See helix.engine.HelixEngine. speculative_tokens k in 1..3: draft k
        tokens per step with the checkpoint's MTP layer and verify them in one step (docs/speculative.md;
        helix.CheckpointError when the checkpoint has none); last_stats.speculative counts the acceptance.
        max_batch_tokens: tokens per step (None: default_max_batch_tokens(device)).
        precision: "float32" (default, float32-grade) or "bf16" (opt-in: x rounded to bf16 in prefill-sized
        linear calls and in the attention products; needs dtype="bfloat16" and a CPU with AVX512_BF16 or
        AMX; process-wide; see helix.precision)."""
        if max_batch_tokens is None:
            max_batch_tokens = default_max_batch_tokens(device)
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens!r}")
        speculative_tokens = check_speculative_tokens(speculative_tokens)
        precision = check_precision(precision, dtype=dtype, device=device)
        pc = parallel_config or ParallelConfig()
        self.parallel_config = pc
        self.model_dir = Path(model_dir)
        self.engine = HelixEngine(
            str(model_dir),
            comm=comm,
            tp=pc.tensor_parallel_size,
            cp=pc.context_parallel_size,
            tokens_per_block=pc.tokens_per_block,
            max_tokens=pc.max_tokens or 16384,
            dtype=dtype,
            wuv_before_exchange=wuv_before_exchange,
            expert_tensor_parallel=expert_tensor_parallel,
            progress=progress,
            device=device,
            cuda_comm=cuda_comm,
            mtp=speculative_tokens > 0,
        )
        apply_precision(precision)
        self.precision = precision
        self.scheduler = Scheduler(
            self.engine, self.engine.eos_token_ids, max_batch_tokens, speculative_tokens=speculative_tokens
        )
        tok_path = Path(model_dir) / "tokenizer.json"
        self.tokenizer = None
        if tok_path.exists():
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(tok_path))
        self._detokenizers: dict[int, IncrementalDetokenizer] = {}  # unfinished requests, with a tokenizer
        self.last_stats: GenerationStats | None = None

    @property
    def max_request_tokens(self) -> int:
        """The longest request (prompt + max_new_tokens) the KV pool can ever hold: its blocks rotate over
        the CP ranks, each of which has num_kv_blocks."""
        eng = self.engine
        return eng.num_kv_blocks * eng.cp * eng.tokens_per_block

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(
                    "this model folder has no tokenizer.json: give prompts as token ids (--prompt-token-ids)"
                )
            return list(self.tokenizer.encode(prompt).ids)
        return check_prompt_ids(prompt, self.engine.config.vocab_size)

    def add_request(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> int:
        """Queues one request (text or token ids); returns its id. Invalid input raises ValueError here; a
        request that can never fit the KV pool is refused: the next step() returns its output with
        finish_reason "refused" and the reason in error. Collective under MPI (a seed is broadcast from
        rank 0 when sampling_params.seed is None)."""
        return self._add(self.encode(prompt), self._check_params(sampling_params))

    def step(self, on_logits: Callable[[int, np.ndarray], None] | None = None) -> list[RequestOutput]:
        """Admits waiting requests as KV blocks free and runs one engine step over the running ones.

        Returns the output of every request that changed in this step: a new token (its token_ids so far;
        finished when it was the last one, finish_reason "eos", "stop" or "length") or refused since the last
        step. With a tokenizer, out.text is the text so far (see helix.detokenize); a stop string ends the
        request in the step that completes it (on every rank alike, so the abort is collective too).
        Each request keeps one RequestOutput object, updated in place. [] when there is nothing to do.
        on_logits(request_id, logits[vocab]) is called for every sampled token. Collective under MPI.
        """
        outputs = self.scheduler.step(on_logits)
        for out in outputs:
            detok = self._detokenizers.get(out.request_id)
            if detok is None:
                continue
            if out.token_ids and detok.add(out.token_ids[-1]):
                if not out.finished:  # every rank sees the same text: the abort is collective too
                    self.scheduler.abort(out.request_id)
                out.finish_reason, out.stop_reason = "stop", detok.stop_reason
            if out.finished:
                detok.finish()
                del self._detokenizers[out.request_id]
            out.text = detok.text
        return outputs

    def has_unfinished_requests(self) -> bool:
        """Whether a request is waiting, running, or refused and not yet returned by step()."""
        return self.scheduler.has_unfinished()

    def abort_request(self, request_id: int) -> RequestOutput | None:
        """Drops a waiting or running request and frees its KV blocks. Returns its output (finish_reason
        "aborted", the tokens so far), or None when it had already finished; KeyError for an id that was
        never returned by add_request. Collective under MPI."""
        out = self.scheduler.abort(request_id)
        detok = self._detokenizers.pop(request_id, None)
        if out is not None and detok is not None:
            out.text = detok.text
        return out

    # ---- KV hand-off (helix.disagg): a request's KV out of this LLM and into another of any layout

    def export_kv(self, request_id: int, path: str | os.PathLike) -> None:
        """Writes a running request's KV (every position but its last token's, every layer) and its tokens
        to `path` (rank 0 writes; see helix.disagg.kv_file). Collective under MPI."""
        from helix.disagg.offline import export_kv

        export_kv(self, request_id, path)

    def import_kv(self, path: str | os.PathLike, sampling_params: SamplingParams | None = None) -> int:
        """Adds the request exported to `path` by export_kv (any layout) and returns its id: it decodes on
        from its last token with sampling_params (max_new_tokens counts the tokens it already has).
        helix.disagg.KVFileError for another model, another KV dtype or a damaged file; KVCacheFullError
        when its blocks are not free now. Collective under MPI."""
        from helix.disagg.offline import import_kv

        return import_kv(self, path, self._check_params(sampling_params))

    def begin_import(
        self,
        prompt: list[int],
        token_ids: list[int],
        params: SamplingParams,
        seed: int,
        logprobs: list[TokenLogprobs] | None = None,
    ) -> int:
        """A request whose KV arrives from another engine: see Scheduler.begin_import. Collective."""
        rid = self.scheduler.begin_import(prompt, token_ids, params, seed, logprobs)
        if self.tokenizer is not None:
            detok = self._detokenizers[rid] = IncrementalDetokenizer(self.tokenizer, params.stop)
            for t in token_ids:
                detok.add(t)
        return rid

    def finish_import(self, request_id: int, rows: np.ndarray) -> RequestOutput:
        """This rank's rows [num_layers, n, D] of the request's KV in; it joins the batch. Collective."""
        out = self.scheduler.finish_import(request_id, rows)
        detok = self._detokenizers.get(request_id)
        if detok is not None:
            out.text = detok.text
        return out

    @property
    def stats(self) -> GenerationStats:
        """Step timings, tokens and peak KV blocks since this LLM was made, the last reset_stats() or the
        last generate(). It keeps one timing per step: a long-running loop should reset it now and then."""
        return self.scheduler.stats

    def reset_stats(self) -> GenerationStats:
        """Returns the statistics so far (see stats) and starts new ones."""
        return self.scheduler.reset_stats()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        on_logits: Callable[[int, np.ndarray], None] | None = None,
    ) -> list[RequestOutput]:
        """Decodes every prompt; returns one RequestOutput per prompt, in order (add_request for each, then
        step until they are done). Statistics of the call: last_stats.

        on_logits(request_index, logits[vocab]) is called for every sampled token. Requests added with
        add_request must be finished or aborted first.
        """
        if self.has_unfinished_requests():
            raise RuntimeError(
                "generate() needs the scheduler to itself: requests added with add_request are unfinished "
                "(step() until has_unfinished_requests() is False, or abort_request them)"
            )
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        ids = [self.encode(p) for p in prompts]
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [self._check_params(sampling_params)] * len(ids)
        else:
            params = [self._check_params(p) for p in sampling_params]
        if len(params) != len(ids):
            raise ValueError(f"{len(params)} sampling params for {len(ids)} prompts")
        self.scheduler.reset_stats()
        index = {self._add(i, p): n for n, (i, p) in enumerate(zip(ids, params, strict=True))}
        callback = None if on_logits is None else (lambda rid, row: on_logits(index[rid], row))
        outputs: list[RequestOutput | None] = [None] * len(ids)
        try:
            while self.has_unfinished_requests():
                for out in self.step(callback):
                    if out.finished:
                        outputs[index[out.request_id]] = out
        except BaseException:
            for rid in index:  # leave no request holding KV blocks behind
                self.abort_request(rid)
            raise
        self.last_stats = self.scheduler.reset_stats()
        return outputs  # type: ignore[return-value]  # every request finished

    def _check_params(self, sampling_params: SamplingParams | None) -> SamplingParams:
        if sampling_params is None:
            return SamplingParams()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(f"expected helix.SamplingParams, got {type(sampling_params).__name__}")
        if sampling_params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer.json in the model folder (use stop_token_ids)")
        return sampling_params

    def _add(self, ids: list[int], params: SamplingParams) -> int:
        seed = params.seed if params.seed is not None else self._shared_seed()
        rid = self.scheduler.add(ids, params, seed)
        if self.tokenizer is not None:
            self._detokenizers[rid] = IncrementalDetokenizer(self.tokenizer, params.stop)
        return rid

    def _shared_seed(self) -> int:
        """A random seed chosen by rank 0 and broadcast, so that every rank samples the same tokens.
        A collective: every rank calls it at the same point (add_request), or the job deadlocks."""
        seed = np.array([np.random.SeedSequence().entropy % (2**62)], np.int64)
        comm = self.engine.comm
        return int(comm.broadcast(seed, 0)[0]) if comm.size > 1 else int(seed[0])
