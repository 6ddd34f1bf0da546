"""From a validated request body to what the engine runs: the prompt's token ids and SamplingParams.

Everything a request could get wrong is found here, on rank 0, before the request reaches the engine
loop: the model name, a text prompt without a tokenizer, a chat without a template, token ids outside the
vocabulary, a prompt plus max_tokens beyond what the KV pool can ever hold. So every request the loop
broadcasts is one every rank accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from helix.generate import SamplingParams
from helix.serve.chat import ChatTemplate, ChatTemplateError
from helix.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest

__all__ = ["ServedModel", "PreparedRequest"]

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass(frozen=True)
class PreparedRequest:
    prompt: list[int]
    params: SamplingParams


class ServedModel:
    """The served model as the HTTP side sees it: name, tokenizer, chat template and limits."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        tokenizer,
        vocab_size: int,
        max_request_tokens: int,
        default_max_tokens: int,
    ) -> None:
        self.name = name
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer, or None
        self.vocab_size = vocab_size
        self.max_request_tokens = max_request_tokens  # prompt + max_tokens, KV pool bound
        self.default_max_tokens = default_max_tokens  # chat requests without max_tokens
        self.chat_template = ChatTemplate.from_model_dir(model_dir) if tokenizer is not None else None

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.name:
            raise ApiError(
                404,
                f"the model {requested!r} does not exist; this server serves {self.name!r}",
                "model",
                "model_not_found",
            )

    def completion(self, req: CompletionRequest) -> PreparedRequest:
        self.check_model(req.model)
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ApiError(
                    400, "this model folder has no tokenizer.json: give the prompt as token ids", "prompt"
                )
            ids = self.tokenizer.encode(prompt).ids
        else:
            bad = [t for t in prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise ApiError(
                    400,
                    f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})",
                    "prompt",
                )
            ids = list(prompt)
        max_tokens = req.max_tokens if req.max_tokens is not None else COMPLETION_DEFAULT_MAX_TOKENS
        return PreparedRequest(ids, self._params(req, len(ids), max_tokens, req.logprobs))

    def chat(self, req: ChatCompletionRequest) -> PreparedRequest:
        self.check_model(req.model)
        if self.chat_template is None:
            raise ApiError(
                400,
                "this model has no chat template (tokenizer.json and a chat_template in "
                "tokenizer_config.json): use /v1/completions",
                "messages",
            )
        try:
            text = self.chat_template.render([m.for_template() for m in req.messages])
        except ChatTemplateError as exc:
            raise ApiError(400, str(exc), "messages") from None
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        max_tokens = req.max_new_tokens
        if max_tokens is None:  # as many as asked by default, within what the pool holds
            max_tokens = max(1, min(self.default_max_tokens, self.max_request_tokens - len(ids)))
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        return PreparedRequest(ids, self._params(req, len(ids), max_tokens, logprobs))

    def _params(self, req, prompt_len: int, max_tokens: int, logprobs: int | None) -> SamplingParams:
        if prompt_len == 0:
            raise ApiError(400, "the prompt has no tokens", "prompt")
        if prompt_len + max_tokens > self.max_request_tokens:
            raise ApiError(
                400,
                f"the prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) is "
                f"{prompt_len + max_tokens} tokens, more than the KV cache can hold for one request "
                f"({self.max_request_tokens} tokens)",
                "max_tokens",
            )
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        if stop and self.tokenizer is None:
            raise ApiError(400, "stop strings need a tokenizer.json: use stop_token_ids", "stop")
        if any(not s for s in stop):
            raise ApiError(400, "stop strings must not be empty", "stop")
        stop_ids = tuple(req.stop_token_ids or ())
        bad = [t for t in stop_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ApiError(400, f"stop_token_ids {bad[:5]} are outside the vocabulary", "stop_token_ids")
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=req.temperature,
            top_k=max(req.top_k, 0),
            top_p=req.top_p,
            seed=req.seed,
            ignore_eos=req.ignore_eos,
            stop=stop,
            stop_token_ids=stop_ids,
            logprobs=logprobs,
        )
