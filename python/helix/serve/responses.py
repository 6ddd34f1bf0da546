"""The OpenAI API's response bodies, from the Deltas the engine loop hands over: a whole response
(text_completion, chat.completion) or one stream chunk per token (server-sent events), the last one with
the finish reason and the usage counts.

Finish reasons: the engine's eos and stop become "stop", length stays, aborted becomes "abort" (vLLM's
word); stop_reason (vLLM's) names the stop string or stop token id, None for EOS. Log-probabilities are
the model's (before temperature, top-k and top-p), natural log; a token's text is its decoded piece, or
"token_id:<id>" without a tokenizer. vLLM's return_token_ids adds prompt_token_ids and token_ids.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from helix.generate import TokenLogprobs
from helix.serve.client import Delta

__all__ = ["ResponseBuilder", "openai_finish_reason"]

_FINISH = {"eos": "stop", "stop": "stop", "length": "length", "aborted": "abort", "refused": "abort"}


def openai_finish_reason(reason: str | None) -> str | None:
    return None if reason is None else _FINISH.get(reason, reason)


class ResponseBuilder:
    """One request's response: chat=False for /v1/completions, True for /v1/chat/completions."""

    def __init__(
        self,
        *,
        chat: bool,
        model: str,
        prompt: list[int],
        tokenizer,
        logprobs: bool,
        return_token_ids: bool,
        include_usage: bool = False,
    ) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.logprobs = logprobs
        self.return_token_ids = return_token_ids
        self.include_usage = include_usage  # stream_options: a last chunk with usage and no choices
        self._text_offset = 0
        self._first_chunk = True

    # ---- pieces

    def _token_text(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def usage(self, completion_tokens: int) -> dict[str, int]:
        n = len(self.prompt)
        return {
            "prompt_tokens": n,
            "completion_tokens": completion_tokens,
            "total_tokens": n + completion_tokens,
        }

    def _logprobs(self, lps: list[TokenLogprobs]) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        if self.chat:
            return {"content": [self._chat_logprob(lp) for lp in lps]}
        tokens = [self._token_text(lp.token_id) for lp in lps]
        offsets = []
        for t in tokens:
            offsets.append(self._text_offset)
            self._text_offset += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{self._token_text(t): v for t, v in lp.top} for lp in lps],
            "text_offset": offsets,
        }

    def _chat_logprob(self, lp: TokenLogprobs) -> dict[str, Any]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self._token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}

    def _choice(
        self, text: str, token_ids: list[int], lps: list[TokenLogprobs], delta: Delta | None, stream: bool
    ):
        finish = delta.finish_reason if delta is not None else None
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            message = {"content": text}
            if not stream or self._first_chunk:
                message = {"role": "assistant", **message}
            choice["delta" if stream else "message"] = message
        else:
            choice["text"] = text
        choice["logprobs"] = self._logprobs(lps)
        choice["finish_reason"] = openai_finish_reason(finish)
        choice["stop_reason"] = delta.stop_reason if delta is not None and finish else None
        if self.return_token_ids:
            choice["token_ids"] = token_ids
            if not stream or self._first_chunk:
                choice["prompt_token_ids"] = self.prompt
        self._first_chunk = False
        return choice

    def _envelope(self, stream: bool) -> dict[str, Any]:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if stream and self.chat else ""
        )
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    # ---- whole responses and chunks

    def response(self, deltas: list[Delta]) -> dict[str, Any]:
        """The non-streamed response of a finished request."""
        last = deltas[-1]
        text = "".join(d.text for d in deltas)
        ids = [t for d in deltas for t in d.token_ids]
        lps = [lp for d in deltas for lp in d.logprobs]
        choice = self._choice(text, ids, lps, last, stream=False)
        out = {**self._envelope(False), "choices": [choice], "usage": self.usage(last.completion_tokens)}
        return self._with_kv_transfer(out, deltas)

    def chunk(self, delta: Delta) -> dict[str, Any]:
        """One stream chunk: one token (the last one with finish_reason and usage)."""
        choice = self._choice(delta.text, delta.token_ids, delta.logprobs, delta, stream=True)
        out = {**self._envelope(True), "choices": [choice]}
        if delta.finished and not self.include_usage:
            out["usage"] = self.usage(delta.completion_tokens)
        elif self.include_usage:
            out["usage"] = None
        return self._with_kv_transfer(out, [delta])

    @staticmethod
    def _with_kv_transfer(out: dict[str, Any], deltas: list[Delta]) -> dict[str, Any]:
        """Disaggregated roles: the hand-off's facts (a context's handle, a generation's bytes per rank)."""
        facts = {k: v for d in deltas if d.kv_transfer for k, v in d.kv_transfer.items()}
        if facts:
            out["kv_transfer_params"] = facts
        return out

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        """stream_options.include_usage: the chunk after the last, with no choices."""
        return {**self._envelope(True), "choices": [], "usage": self.usage(completion_tokens)}
