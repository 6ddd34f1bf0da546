"""The pieces of helix serve that need no server, one process, no engine: request validation (protocol,
prepare), the chat template against transformers' own rendering, responses, and the metrics text."""

from __future__ import annotations

import json

import pytest
from helix.generate import TokenLogprobs
from helix.serve.client import Delta
from helix.serve.metrics import Histogram, ServerMetrics
from helix.serve.prepare import ServedModel
from helix.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest, parse_body
from helix.serve.responses import ResponseBuilder
from helix.tiny_tokenizer import make_tiny_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def served(tok_dir) -> ServedModel:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    return ServedModel("m", tok_dir, tok, vocab_size=1000, max_request_tokens=64, default_max_tokens=100)


def completion(served, **body):
    return served.completion(parse_body(json.dumps({"prompt": [1, 2], **body}).encode(), CompletionRequest))


def api_error(fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    return info.value


def test_completion_request_to_sampling_params(served):
    got = completion(served, max_tokens=5, temperature=0.5, top_k=-1, top_p=0.9, seed=3, stop="x",
                     stop_token_ids=[7], ignore_eos=True, logprobs=2)  # fmt: skip
    p = got.params
    assert got.prompt == [1, 2] and p.max_new_tokens == 5 and p.temperature == 0.5 and p.top_k == 0
    assert (p.top_p, p.seed, p.stop, p.stop_token_ids, p.ignore_eos, p.logprobs) == (
        0.9,
        3,
        ("x",),
        (7,),
        True,
        2,
    )
    defaults = completion(served).params
    assert defaults.max_new_tokens == 16 and defaults.temperature == 1.0 and defaults.logprobs is None
    assert completion(served, prompt="Hello").prompt == served.tokenizer.encode("Hello").ids
    assert completion(served, prompt=[[3, 4]]).prompt == [3, 4]


def test_bad_requests_name_the_parameter(served):
    cases = [
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": 5.5}, "max_tokens", "valid integer"),
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"logprobs": 21}, "logprobs", "less than or equal to 20"),
        ({"seed": "1"}, "seed", "valid integer"),
        ({"prompt": [1, "a"]}, "prompt", ""),
        ({"echo": True}, "echo", "echo is not supported"),
        ({"presence_penalty": 0.5}, "presence_penalty", "not supported"),
        ({"best_of": 2}, "best_of", "best_of must be 1"),
        ({"prompt": [1, 1000]}, "prompt", "outside the vocabulary [0, 1000)"),
        ({"max_tokens": 63}, "max_tokens", "(64 tokens)"),
        ({"stop": [""]}, "stop", "must not be empty"),
        ({"stop_token_ids": [1000]}, "stop_token_ids", "outside the vocabulary"),
        ({"model": "x"}, "model", "does not exist"),
    ]
    for body, param, message in cases:
        err = api_error(completion, served, **body)
        assert err.param == param and message in err.message, (body, err.message)
        assert err.status == (404 if param == "model" else 400)
        assert err.body()["error"]["type"] == "invalid_request_error"


def test_chat_template_renders_as_transformers_does(served, tok_dir):
    """The same prompt text as transformers' apply_chat_template on the same folder."""
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello, world"}]
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert served.chat_template.render(messages) == want
    req = ChatCompletionRequest.model_validate(
        {"messages": [messages[0], {"role": "user", "content": [{"type": "text", "text": "Hello, world"}]}]}
    )
    prepared = served.chat(req)
    assert prepared.prompt == served.tokenizer.encode(want, add_special_tokens=False).ids
    assert prepared.params.max_new_tokens == 64 - len(prepared.prompt)  # default, capped by the pool
    err = api_error(served.chat, ChatCompletionRequest.model_validate({"messages": [{"role": "robot"}]}))
    assert err.status == 400 and "unknown role: robot" in err.message


def test_chat_without_a_template_is_a_400(tok_dir):
    bare = ServedModel("m", tok_dir / "missing", None, 1000, 64, 16)
    err = api_error(
        bare.chat, ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}]})
    )
    assert err.status == 400 and "no chat template" in err.message
    err = api_error(bare.completion, CompletionRequest.model_validate({"prompt": "text"}))
    assert "no tokenizer.json" in err.message


def test_response_bodies(served):
    lp = [TokenLogprobs(5, -0.5, ((5, -0.5), (9, -1.5)))]
    deltas = [
        Delta([5], "ab", lp, 1),
        Delta([6], "c", [TokenLogprobs(6, -0.1, ((6, -0.1), (9, -2.0)))], 2, "stop", "zz"),
    ]
    b = ResponseBuilder(
        chat=False, model="m", prompt=[1, 2], tokenizer=None, logprobs=True, return_token_ids=True
    )
    body = b.response(deltas)
    choice = body["choices"][0]
    assert choice["text"] == "abc" and choice["token_ids"] == [5, 6] and choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == "zz" and body["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 2,
        "total_tokens": 4,
    }
    assert choice["logprobs"]["tokens"] == ["token_id:5", "token_id:6"]
    assert choice["logprobs"]["top_logprobs"][0] == {"token_id:5": -0.5, "token_id:9": -1.5}
    chat = ResponseBuilder(
        chat=True, model="m", prompt=[1], tokenizer=served.tokenizer, logprobs=True, return_token_ids=False
    )
    first, last = chat.chunk(deltas[0]), chat.chunk(deltas[1])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"
    assert "role" not in last["choices"][0]["delta"] and last["usage"]["completion_tokens"] == 2
    assert (
        "usage" not in first
        and last["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["logprob"] == -2.0
    )


def test_metrics_text_format():
    h = Histogram([0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)
    assert h.lines("x") == [
        'x_bucket{le="0.1"} 2',
        'x_bucket{le="1.0"} 3',
        'x_bucket{le="+Inf"} 4',
        "x_sum 3.65",
        "x_count 4",
    ]
    m = ServerMetrics("m", 64)
    m.record_step(2, 1, [3, 4])
    m.record_tokens([0.2], [0.01, 0.02], 3)
    m.record_request(5, "length")
    text = m.render()
    assert 'helix_kv_blocks_used{rank="1"} 4' in text and "helix_requests_waiting 1" in text
    assert 'helix_requests_finished_total{finish_reason="length"} 1' in text
    assert "helix_inter_token_latency_seconds_count 2" in text and "helix_generation_tokens_total 3" in text
    assert "spec_decode" not in text  # no speculative decoding, no such families
    spec = ServerMetrics("m", 64, speculative_tokens=2)
    spec.record_speculative(3, 6, 4)
    spec.record_speculative(1, 2, 2)
    spec_text = spec.render()
    assert (
        "helix_spec_decode_steps_total 4" in spec_text
        and "helix_spec_decode_draft_tokens_total 8" in spec_text
    )
    assert "helix_spec_decode_accepted_tokens_total 6" in spec_text
    for page in (text, spec_text):
        for line in page.splitlines():  # every sample belongs to a declared family
            assert line.startswith("# ") or line.split("{")[0].split(" ")[0].rsplit("_bucket", 1)[0] in page
