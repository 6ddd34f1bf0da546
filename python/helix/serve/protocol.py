"""The OpenAI API's request bodies (/v1/completions, /v1/chat/completions) and its errors.

Bodies are validated strictly (pydantic strict mode: "5" is not an integer, 1 is not a boolean); fields
this server does not know are ignored, as vLLM does. Every problem becomes an ApiError: an OpenAI-style
JSON error ({"error": {"message", "type", "param", "code"}}) with its HTTP status. Parameters Helix does
not implement (n > 1, echo, suffix, penalties, logit_bias, best_of > 1) are refused with a 400 naming them
rather than ignored. vLLM's extensions: top_k, ignore_eos, stop_token_ids, return_token_ids.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "MAX_LOGPROBS",
    "ApiError",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "parse_body",
]

MAX_LOGPROBS = 20  # alternatives per token (OpenAI's limit for chat; vLLM's default max_logprobs)

_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error answered as OpenAI does: status, message, the parameter at fault and a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    """What both endpoints share."""

    model: str | None = None  # None: the served model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0)  # OpenAI's default
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # vLLM: -1 or 0 keep every token
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    return_token_ids: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Disaggregated serving (vLLM's name): the router's hand-off of a request between a context and a
    # generation server (helix.serve.context_role / generation_role); other servers ignore it.
    kv_transfer_params: dict[str, Any] | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        """(parameter, why) for what was asked but is not implemented."""
        bad = []
        if self.n != 1:
            bad.append(("n", f"n must be 1 (one choice per request), got {self.n}"))
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0.0):
                bad.append((name, f"{name} is not supported (only 0)"))
        if self.logit_bias:
            bad.append(("logit_bias", "logit_bias is not supported"))
        return bad


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        bad = super().unsupported()
        if self.echo:
            bad.append(("echo", "echo is not supported"))
        if self.suffix:
            bad.append(("suffix", "suffix is not supported"))
        if self.best_of not in (None, 1):
            bad.append(("best_of", f"best_of must be 1, got {self.best_of}"))
        return bad

    def single_prompt(self) -> str | list[int]:
        """The one prompt (a string or token ids): batches of prompts are refused."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], str | list):
            if len(p) != 1:
                raise ApiError(400, f"prompt: give one prompt per request, got a batch of {len(p)}", "prompt")
            p = p[0]
        if len(p) == 0:
            raise ApiError(400, "prompt is empty", "prompt")
        return p


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")  # name, tool_call_id...: passed to the template
    role: str
    content: str | list[TextPart] | None = None

    def for_template(self) -> dict[str, Any]:
        out = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            out["content"] = "".join(part.text for part in self.content)
        return out


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    max_completion_tokens: int | None = Field(None, ge=1)

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_body(raw: bytes, model: type[_Strict]) -> Any:
    """The request body as `model`, or an ApiError(400) naming the first bad field."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(obj).__name__}")
    try:
        req = model.model_validate(obj)
    except ValidationError as exc:
        errors = [(_param(e["loc"]), e) for e in exc.errors()]
        param, first = errors[0]
        # A union (prompt: str | list[int] | ...) reports one error per alternative: say them all.
        why = " or ".join(dict.fromkeys(e["msg"] for p, e in errors if p == param))
        raise ApiError(400, f"{param}: {why} (got {_short(first.get('input'))})", param) from None
    bad = req.unsupported()
    if bad:
        raise ApiError(400, bad[0][1], bad[0][0])
    return req


def _param(loc: tuple) -> str | None:
    """The field path of a pydantic error location, less the union alternatives pydantic names
    ("str", "list[int]", a model's class name)."""
    parts = []
    for part in loc:
        if isinstance(part, str) and (
            part in ("str", "int", "float", "bool") or "[" in part or part[:1].isupper()
        ):
            break
        parts.append(str(part))
    return ".".join(parts) or None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
