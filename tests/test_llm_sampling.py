"""The sampling features of helix.LLM that serving needs, on one rank: stop token ids, stop strings (with
incremental detokenization), log-probabilities of the sampled tokens, and their validation. References:
the same request without the feature (the tokens are the same up to where it stops), and a float64
log-softmax of the logits the engine returned (on_logits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helix.detokenize import IncrementalDetokenizer
from helix.generate import SamplingParams
from helix.llm import LLM
from helix.parallel_config import ParallelConfig
from helix.tiny import make_tiny_model
from helix.tiny_tokenizer import make_tiny_tokenizer

PROMPT = [5, 17, 300, 499, 42, 8]
GREEDY = SamplingParams(max_new_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sampling") / "tiny"
    make_tiny_model(path)
    make_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def llm(model) -> LLM:
    return LLM(model, ParallelConfig(tokens_per_block=4, max_tokens=512), progress=False)


@pytest.fixture(scope="module")
def full(llm):
    return llm.generate(PROMPT, GREEDY)[0]


def assert_all_free(llm: LLM) -> None:
    assert llm.engine.num_free_blocks == llm.engine.num_kv_blocks and not llm.has_unfinished_requests()


def test_stop_token_ids(llm, full):
    tok = full.token_ids[7]
    first = full.token_ids.index(tok)
    out = llm.generate(PROMPT, SamplingParams(max_new_tokens=24, ignore_eos=True, stop_token_ids=[tok]))[0]
    assert out.token_ids == full.token_ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == tok
    assert_all_free(llm)


def test_stop_strings_end_the_text_and_free_the_blocks(llm, full):
    """The text ends just before the first stop string; the request stops there (its blocks freed) with
    the tokens it had; text released while decoding never shrinks and never shows the stop string."""
    text = full.text
    assert text == llm.tokenizer.decode(full.token_ids, skip_special_tokens=True)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text.index(stop)
    rid = llm.add_request(
        PROMPT, SamplingParams(max_new_tokens=24, ignore_eos=True, stop=["never seen", stop])
    )
    shown = []
    while llm.has_unfinished_requests():
        for out in llm.step():
            assert out.request_id == rid
            assert out.text.startswith(shown[-1] if shown else "") and stop not in out.text
            shown.append(out.text)
    assert out.finish_reason == "stop" and out.stop_reason == stop and out.text == text[:cut]
    assert out.token_ids == full.token_ids[: len(out.token_ids)] and len(out.token_ids) < 24
    assert_all_free(llm)


def test_logprobs_are_the_log_softmax_of_the_logits(llm):
    rows = []
    params = SamplingParams(max_new_tokens=6, temperature=0.8, seed=3, ignore_eos=True, logprobs=4)
    out = llm.generate(PROMPT, params, on_logits=lambda _i, row: rows.append(row.astype(np.float64)))[0]
    assert len(out.logprobs) == 6
    for row, lp, tok in zip(rows, out.logprobs, out.token_ids, strict=True):
        ref = row - row.max() - np.log(np.exp(row - row.max()).sum())
        assert lp.token_id == tok and lp.logprob == pytest.approx(ref[tok], abs=1e-9)
        assert [t for t, _ in lp.top] == np.argsort(-ref, kind="stable")[:4].tolist()
        np.testing.assert_allclose([v for _, v in lp.top], np.sort(ref)[::-1][:4], atol=1e-9)
    assert llm.generate(PROMPT, SamplingParams(max_new_tokens=2))[0].logprobs is None


def test_abort_keeps_the_text_so_far(llm):
    rid = llm.add_request(PROMPT, GREEDY)
    for _ in range(5):
        llm.step()
    out = llm.abort_request(rid)
    assert out.finish_reason == "aborted" and out.text == llm.tokenizer.decode(out.token_ids)[: len(out.text)]
    assert_all_free(llm)


def test_bad_sampling_params():
    for kwargs, match in [
        ({"stop": [""]}, "stop must be non-empty strings"),
        ({"stop": [3]}, "stop must be non-empty strings"),
        ({"stop_token_ids": [-1]}, "stop_token_ids must be non-negative"),
        ({"stop_token_ids": [True]}, "stop_token_ids must be non-negative"),
        ({"logprobs": -1}, "logprobs must be None or a non-negative"),
        ({"seed": 1.5}, "seed must be an integer"),
    ]:
        with pytest.raises(ValueError, match=match):
            SamplingParams(**kwargs)
    assert SamplingParams(stop="x").stop == ("x",)


def test_stop_strings_need_a_tokenizer(tmp_path):
    make_tiny_model(tmp_path)
    llm = LLM(tmp_path, ParallelConfig(tokens_per_block=4, max_tokens=64), progress=False)
    with pytest.raises(ValueError, match="stop strings need a tokenizer.json"):
        llm.add_request([1, 2], SamplingParams(stop=["x"]))
    assert not llm.has_unfinished_requests()


def test_detokenizer_holds_back_a_possible_stop_string(model):
    """Byte-level pieces of one character are held until it is whole; an end that may begin a stop
    string is held until the next piece settles it."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    ids = tok.encode("café ab abc").ids
    detok = IncrementalDetokenizer(tok, stop=("abc",))
    shown = []
    for t in ids:
        if detok.add(t):
            break
        shown.append(detok.text)
    assert all("\ufffd" not in s for s in shown) and detok.stop_reason == "abc"
    assert detok.text == "café ab " and all(detok.text.startswith(s) for s in shown)
    plain = IncrementalDetokenizer(tok)
    for t in ids:
        plain.add(t)
    assert plain.finish() == "café ab abc"


def test_generate_cli_stop_and_logprobs(model, full, capsys):
    """helix generate --stop-token-ids / --stop / --logprobs: the same results as the Python API."""
    import json

    from helix.generate_cli import main as generate_main

    tok = full.token_ids[4]
    args = ["--model", str(model), "--tokens-per-block", "4", "--max-tokens", "512", "--json", "--ignore-eos"]
    args += ["--prompt-token-ids", ",".join(map(str, PROMPT)), "--max-new-tokens", "24"]
    assert generate_main([*args, "--stop-token-ids", str(tok), "--logprobs", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["outputs"][0]
    assert out["token_ids"] == full.token_ids[: full.token_ids.index(tok) + 1] and out["stop_reason"] == tok
    assert [lp["token_id"] for lp in out["logprobs"]] == out["token_ids"]
    assert all(len(lp["top"]) == 2 for lp in out["logprobs"])
    stop = full.text[5:8]
    assert generate_main([*args, "--stop", stop]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["outputs"][0]
    assert out["finish_reason"] == "stop" and out["text"] == full.text[: full.text.index(stop)]
