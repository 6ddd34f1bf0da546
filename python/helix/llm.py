"""The Python API: ``helix.LLM(model_dir, parallel_config).generate(prompts, helix.SamplingParams(...))``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from helix.engine import HelixEngine
from helix.generate import GenerationStats, RequestOutput, SamplingParams, Scheduler
from helix.parallel_config import ParallelConfig

__all__ = ["LLM"]

Prompt = str | Sequence[int]


class LLM:
    """A DeepSeek-V3-architecture model decoded with Helix parallelism across this job's ranks."""

    def __init__(
        self,
        model_dir: str | os.PathLike,
        parallel_config: ParallelConfig | None = None,
        *,
        dtype: str = "float32",
        comm=None,
        max_batch_tokens: int = 512,
        wuv_before_exchange: bool = False,
        expert_tensor_parallel: bool = False,
        progress: bool = True,
        device: str = "cpu",
    ) -> None:
        """device: "cpu", or "cuda" (one GPU per local rank; see helix.engine.HelixEngine)."""
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be a positive integer, got {max_batch_tokens!r}")
        pc = parallel_config or ParallelConfig()
        self.parallel_config = pc
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
        )
        self.scheduler = Scheduler(self.engine, self.engine.eos_token_ids, max_batch_tokens)
        tok_path = Path(model_dir) / "tokenizer.json"
        self.tokenizer = None
        if tok_path.exists():
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(tok_path))
        self.last_stats: GenerationStats | None = None

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(
                    "this model folder has no tokenizer.json: give prompts as token ids (--prompt-token-ids)"
                )
            return list(self.tokenizer.encode(prompt).ids)
        ids = [int(t) for t in prompt]
        vocab = self.engine.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        return ids

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        on_logits: Callable[[int, np.ndarray], None] | None = None,
    ) -> list[RequestOutput]:
        """Decodes every prompt; returns one RequestOutput per prompt, in order.

        on_logits(request_index, logits[vocab]) is called for every sampled token.
        """
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        ids = [self.encode(p) for p in prompts]
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = (
            list(sampling_params) if isinstance(sampling_params, Sequence) else [sampling_params] * len(ids)
        )
        if len(params) != len(ids):
            raise ValueError(f"{len(params)} sampling params for {len(ids)} prompts")
        seeds = [p.seed if p.seed is not None else self._shared_seed() + i for i, p in enumerate(params)]
        outputs, self.last_stats = self.scheduler.run(ids, params, seeds, on_logits)
        if self.tokenizer is not None:
            for out in outputs:
                out.text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        return outputs

    def _shared_seed(self) -> int:
        """A random seed chosen by rank 0 and shared, so that every rank samples the same tokens."""
        seed = np.array([np.random.SeedSequence().entropy % (2**62)], np.int64)
        comm = self.engine.comm
        return int(comm.broadcast(seed, 0)[0]) if comm.size > 1 else int(seed[0])
