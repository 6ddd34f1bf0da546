"""The decode loop in one process: sampling, the scheduler, EOS, the tokenizer, bfloat16, the CLI's errors.

Every test decodes the embedded default tiny model (or a variant) with the real engine on one rank; the
multi-rank layouts and the transformers oracle are in tests/test_mpi_decode.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helix.engine import HelixEngine
from helix.generate import SamplingParams, sample
from helix.generate_cli import main as generate_main
from helix.llm import LLM
from helix.parallel_config import ParallelConfig
from helix.tiny import make_tiny_model

PROMPTS = [list(range(2, 15)), [0, 5, 17, 300, 499, 42], [7, 8]]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "tiny"
    make_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def llm(model) -> LLM:
    return LLM(model, ParallelConfig(tokens_per_block=4), max_batch_tokens=8, progress=False)


@pytest.fixture(scope="module")
def solo(llm) -> list[list[int]]:
    """Each prompt decoded alone, greedy, 24 tokens, EOS ignored: what batching must not change."""
    return [
        llm.generate([p], SamplingParams(max_new_tokens=24, ignore_eos=True))[0].token_ids for p in PROMPTS
    ]


class Recorder:
    """The real engine, with its sequence bookkeeping recorded (the scheduler drives it unchanged)."""

    def __init__(self, engine: HelixEngine) -> None:
        self._engine = engine
        self.events: list[tuple[str, int]] = []  # ("add" | "free", seq_id) and ("step", number of sequences)
        self.live: set[int] = set()
        self.max_live = 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def add_sequence(self, seq_id: int, reserve_tokens: int = 0) -> None:
        self._engine.add_sequence(seq_id, reserve_tokens)
        self.live.add(seq_id)
        self.max_live = max(self.max_live, len(self.live))
        self.events.append(("add", seq_id))

    def free_sequence(self, seq_id: int) -> None:
        self._engine.free_sequence(seq_id)
        self.live.discard(seq_id)
        self.events.append(("free", seq_id))

    def step(self, tokens, positions, seq_ids, q_seq_index, logit_rows):
        self.events.append(("step", len(seq_ids)))
        return self._engine.step(tokens, positions, seq_ids, q_seq_index, logit_rows)


@pytest.fixture
def recorder(llm):
    rec = Recorder(llm.engine)
    llm.scheduler.engine = rec
    yield rec
    llm.scheduler.engine = llm.engine


# ---- sample() -----------------------------------------------------------------------------------------


def test_sample_greedy_and_degenerate_filters():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=500).astype(np.float32)
    best = int(np.argmax(logits))
    assert sample(logits, SamplingParams(), rng) == best
    for _ in range(20):
        assert sample(logits, SamplingParams(temperature=1.5, top_k=1), rng) == best
        assert sample(logits, SamplingParams(temperature=1.5, top_p=1e-6), rng) == best


def test_sample_distribution():
    """Frequencies follow softmax(logits / T), restricted and renormalized by top-k and top-p."""
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    n = 8000

    def freq(params: SamplingParams) -> np.ndarray:
        rng = np.random.default_rng(1)
        return np.bincount([sample(logits, params, rng) for _ in range(n)], minlength=4) / n

    np.testing.assert_allclose(freq(SamplingParams(temperature=1.0)), [0.5, 0.3, 0.15, 0.05], atol=0.025)
    sharp = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    np.testing.assert_allclose(freq(SamplingParams(temperature=0.5)), sharp / sharp.sum(), atol=0.025)
    np.testing.assert_allclose(
        freq(SamplingParams(temperature=1.0, top_k=2)), [0.625, 0.375, 0, 0], atol=0.025
    )
    # top_p = 0.7: the smallest prefix whose mass reaches 0.7 is {0.5, 0.3}
    np.testing.assert_allclose(
        freq(SamplingParams(temperature=1.0, top_p=0.7)), [0.625, 0.375, 0, 0], atol=0.025
    )


@pytest.mark.parametrize("scale", [8.0, 0.5])  # a peaked distribution (small nucleus) and a flat one
def test_sample_top_p_keeps_exactly_the_nucleus(scale):
    """Over a large vocabulary, top-p (alone and after top-k) samples only the brute-force nucleus."""
    rng = np.random.default_rng(2)
    logits = (scale * rng.normal(size=5000)).astype(np.float32)
    z = logits.astype(np.float64) / 0.7
    order = np.argsort(-z)
    for top_k in (0, 300):
        kept = order[:top_k] if top_k else order
        p = np.exp(z[kept] - z[kept].max())
        p /= p.sum()
        nucleus = set(kept[: int(np.searchsorted(np.cumsum(p), 0.8) + 1)].tolist())
        params = SamplingParams(temperature=0.7, top_p=0.8, top_k=top_k)
        drawn = {sample(logits, params, rng) for _ in range(400)}
        assert drawn <= nucleus
        assert len(drawn) >= min(len(nucleus), 50) // 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be >= 0"),
        ({"top_k": -1}, "top_k must be a non-negative integer"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


# ---- the scheduler ------------------------------------------------------------------------------------


def test_requests_finish_at_different_steps(llm, solo, recorder):
    """Each request stops at its own max_new_tokens and frees its blocks while the others continue;
    batching (and chunked prefill of the 13-token prompt) changes no token."""
    lengths = [5, 24, 12]
    params = [SamplingParams(max_new_tokens=m, ignore_eos=True) for m in lengths]
    outs = llm.generate(PROMPTS, params)
    for out, ref, m in zip(outs, solo, lengths, strict=True):
        assert out.token_ids == ref[:m] and out.finish_reason == "length"
    frees = [i for i, (kind, _) in enumerate(recorder.events) if kind == "free"]
    assert len(frees) == 3
    steps_after_first_free = [e for e in recorder.events[frees[0] :] if e[0] == "step"]
    assert steps_after_first_free and all(n == 2 for kind, n in steps_after_first_free[:5])
    assert recorder.max_live == 3
    assert llm.engine.num_free_blocks == llm.engine.num_kv_blocks


def test_queued_requests_join_when_blocks_free(model, solo):
    """A pool of 6 blocks of 4 tokens: one request (<= 4 blocks) at a time; the rest wait, then decode
    exactly as alone. A request that can never fit is refused with the reason; the others complete."""
    small = LLM(model, ParallelConfig(tokens_per_block=4, max_tokens=24), max_batch_tokens=8, progress=False)
    assert small.engine.num_kv_blocks == 6
    rec = Recorder(small.engine)
    small.scheduler.engine = rec
    fits = SamplingParams(max_new_tokens=10, ignore_eos=True)
    too_long = SamplingParams(max_new_tokens=20, ignore_eos=True)  # 13 + 20 tokens: 9 blocks > 6
    outs = small.generate([PROMPTS[1], PROMPTS[0], PROMPTS[2]], [fits, too_long, fits])
    assert outs[0].token_ids == solo[1][:10] and outs[2].token_ids == solo[2][:10]
    assert outs[1].finish_reason == "refused" and outs[1].token_ids == []
    assert "needs 9 KV blocks" in outs[1].error and "6 blocks of 4 tokens" in outs[1].error
    assert "max_tokens" in outs[1].error
    assert rec.max_live == 1
    kinds = [k for k, _ in rec.events if k != "step"]
    assert kinds == ["add", "free", "add", "free"]
    assert small.engine.num_free_blocks == 6


def test_eos_stops_unless_ignored(model, solo, tmp_path):
    """With the 4th greedy token of a prompt made the model's EOS, the request stops right after it."""
    tokens = solo[1]
    k = next(i for i in range(3, len(tokens)) if tokens[i] not in tokens[:i])
    eos_model = tmp_path / "eos"
    shutil.copytree(model, eos_model)
    cfg = json.loads((eos_model / "config.json").read_text())
    cfg["eos_token_id"] = tokens[k]
    (eos_model / "config.json").write_text(json.dumps(cfg))
    llm = LLM(eos_model, ParallelConfig(tokens_per_block=4), progress=False)
    stopped, ignored = llm.generate(
        [PROMPTS[1], PROMPTS[1]],
        [SamplingParams(max_new_tokens=20), SamplingParams(max_new_tokens=20, ignore_eos=True)],
    )
    assert stopped.token_ids == tokens[: k + 1] and stopped.finish_reason == "eos"
    assert ignored.token_ids == tokens[:20] and ignored.finish_reason == "length"


def test_seeded_sampling_is_reproducible(llm):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=40, top_p=0.95, seed=7, ignore_eos=True)
    a = llm.generate(PROMPTS, params)
    b = llm.generate(PROMPTS, params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    c = llm.generate(PROMPTS, SamplingParams(**{**params.__dict__, "seed": 8}))
    assert [o.token_ids for o in a] != [o.token_ids for o in c]


def test_python_api(model):
    import helix
    from helix.llm import default_max_batch_tokens

    llm = helix.LLM(str(model), helix.ParallelConfig(), progress=False)
    assert llm.scheduler.max_batch_tokens == default_max_batch_tokens("cpu") == 2048
    assert default_max_batch_tokens("cuda") == 512
    out = llm.generate([[1, 2, 3], [4, 5]], helix.SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert [len(o.token_ids) for o in out] == [4, 4]
    single = llm.generate([1, 2, 3], helix.SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert single[0].token_ids == out[0].token_ids


# ---- tokenizer ------------------------------------------------------------------------------------------


def _word(i: int) -> str:
    return "[UNK]" if i == 2 else f"w{i}"


@pytest.fixture(scope="module")
def model_with_tokenizer(model, tmp_path_factory) -> Path:
    """The tiny model with a word-level tokenizer.json: "w<i>" is token i (every id of the vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = tmp_path_factory.mktemp("tok") / "tiny"
    shutil.copytree(model, path)
    tok = Tokenizer(models.WordLevel({_word(i): i for i in range(1000)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    return path


def test_text_prompts_with_tokenizer(model_with_tokenizer, solo):
    llm = LLM(model_with_tokenizer, ParallelConfig(tokens_per_block=4), progress=False)
    text = " ".join(_word(i) for i in PROMPTS[1])
    out = llm.generate(text, SamplingParams(max_new_tokens=8, ignore_eos=True))[0]
    assert out.prompt_token_ids == PROMPTS[1]
    assert out.token_ids == solo[1][:8]
    assert out.text == " ".join(_word(i) for i in out.token_ids)


def test_cli_text_prompt(model_with_tokenizer, model, capsys):
    assert (
        generate_main(
            [
                "--model",
                str(model_with_tokenizer),
                "--prompt",
                "w5 w17 w300",
                "--max-new-tokens",
                "3",
                "--ignore-eos",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["outputs"][0]
    assert out["prompt_token_ids"] == [5, 17, 300] and len(out["token_ids"]) == 3
    assert out["text"] == " ".join(_word(i) for i in out["token_ids"])
    # without tokenizer.json a text prompt is refused with the reason
    assert generate_main(["--model", str(model), "--prompt", "w5 w17"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


# ---- bfloat16 ------------------------------------------------------------------------------------------


def test_bfloat16_agrees_with_float32_on_most_argmaxes(model, tmp_path_factory):
    """bfloat16 weights and KV cache, teacher-forced on the float32 greedy sequence (one causal prefill
    per prompt through the same Helix path): >= 90% of the top-1 tokens agree."""
    other = tmp_path_factory.mktemp("bf16") / "q_proj"
    make_tiny_model(other, seed=3, q_lora_rank=None, layout="transformers5")
    agree = total = 0
    worst = 0.0
    for folder in (model, other):
        f32 = LLM(folder, ParallelConfig(tokens_per_block=4), progress=False)
        eng = HelixEngine(str(folder), tokens_per_block=4, max_tokens=256, dtype="bfloat16", progress=False)
        for prompt in PROMPTS:
            logits32: list[np.ndarray] = []
            out = f32.generate(
                [prompt],
                SamplingParams(max_new_tokens=32, ignore_eos=True),
                on_logits=lambda _, row, acc=logits32: acc.append(row.copy()),
            )[0]
            seq = prompt + out.token_ids[:-1]
            rows = np.arange(len(prompt) - 1, len(seq), dtype=np.int64)
            eng.add_sequence(0)
            lg = eng.step(
                np.asarray(seq, np.int64),
                np.arange(len(seq), dtype=np.int64),
                np.zeros(1, np.int64),
                np.zeros(len(seq), np.int64),
                rows,
            )
            eng.free_sequence(0)
            agree += int((lg.argmax(axis=1) == np.asarray(out.token_ids)).sum())
            total += len(out.token_ids)
            worst = max(worst, float(np.abs(lg - np.stack(logits32)).max()))
    rate = agree / total
    print(f"bfloat16 vs float32: top-1 agreement {agree}/{total} = {rate:.3f}, max |logit diff| {worst:.3f}")
    assert rate >= 0.9


def test_bfloat16_decodes(model):
    """Free-running bfloat16 decode through the scheduler starts like float32 (clear argmax at step 1)."""
    bf = LLM(model, ParallelConfig(tokens_per_block=4), dtype="bfloat16", progress=False)
    f32 = LLM(model, ParallelConfig(tokens_per_block=4), progress=False)
    p = SamplingParams(max_new_tokens=4, ignore_eos=True)
    a, b = bf.generate(PROMPTS, p), f32.generate(PROMPTS, p)
    assert [len(o.token_ids) for o in a] == [4, 4, 4]
    assert sum(x.token_ids[0] == y.token_ids[0] for x, y in zip(a, b, strict=False)) >= 2


# ---- the command line: output and every bad input ---------------------------------------------------------


def test_cli_json_and_dump_logits(model, tmp_path, capsys):
    dump = tmp_path / "l.npy"
    argv = [
        "--model",
        str(model),
        "--prompt-token-ids",
        "1,2,3",
        "--prompt-token-ids",
        "4,5",
        "--max-new-tokens",
        "6",
        "--ignore-eos",
        "--json",
        "--dump-logits",
        str(dump),
        "--tokens-per-block",
        "4",
    ]
    assert generate_main(argv) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(obj) == {"outputs", "ttl_ms", "tokens_per_s", "speculative", "error"} and obj["error"] is None
    assert obj["speculative"] is None  # without --speculative-tokens
    assert obj["speculative"] is None  # without --speculative-tokens
    assert [o["prompt_token_ids"] for o in obj["outputs"]] == [[1, 2, 3], [4, 5]]
    assert all(len(o["token_ids"]) == 6 and o["text"] is None for o in obj["outputs"])
    assert {"finish_reason", "error"} <= set(obj["outputs"][0])
    assert len(obj["ttl_ms"]) == 5 and obj["tokens_per_s"] > 0
    logits = np.load(dump)
    assert logits.shape == (6, 1000) and logits.dtype == np.float32
    assert logits.argmax(axis=1).tolist() == obj["outputs"][0]["token_ids"]


def test_cli_refused_request_in_json_and_empty_dump(model, tmp_path, capsys):
    """A request that cannot fit is reported (finish_reason "refused", the reason) while the other completes,
    and the command exits 1 with the reason on stderr and in the JSON line; --dump-logits of a refused first
    request is an empty [0, vocab] array."""
    dump = tmp_path / "l.npy"
    argv = ["--model", str(model), "--max-tokens", "16", "--tokens-per-block", "4", "--max-new-tokens", "12",
            "--prompt-token-ids", ",".join(["3"] * 10), "--prompt-token-ids", "1,2", "--ignore-eos", "--json",
            "--dump-logits", str(dump)]  # fmt: skip
    assert generate_main(argv) == 1
    captured = capsys.readouterr()
    obj = json.loads(captured.out.strip().splitlines()[-1])
    refused, done = obj["outputs"]
    assert refused["finish_reason"] == "refused" and "KV blocks" in refused["error"]
    assert refused["token_ids"] == []
    assert done["finish_reason"] == "length" and len(done["token_ids"]) == 12
    assert obj["error"] == f"request 0 refused: {refused['error']}"
    assert captured.err.strip().splitlines() == [f"helix generate: error: {obj['error']}"]
    assert np.load(dump).shape == (0, 1000)


def test_cli_summary_of_a_refused_request_exits_1(model, capsys):
    argv = ["--model", str(model), "--max-tokens", "16", "--tokens-per-block", "4", "--max-new-tokens", "12",
            "--prompt-token-ids", ",".join(["3"] * 10)]  # fmt: skip
    assert generate_main(argv) == 1
    captured = capsys.readouterr()
    assert "[0] prompt 10 tokens -> 0 tokens (refused: request 0 needs" in captured.out
    assert "helix generate: error: request 0 refused: request 0 needs 6 KV blocks" in captured.err


def test_cli_summary(model, capsys):
    assert (
        generate_main(
            ["--model", str(model), "--prompt-token-ids", "1,2,3", "--max-new-tokens", "5", "--ignore-eos"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "[0] prompt 3 tokens -> 5 tokens (length)" in out
    assert "token-to-token latency: median" in out
    assert "peak KV blocks per rank (per layer): [1] of" in out


@pytest.fixture(scope="module")
def truncated_model(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trunc") / "tiny"
    shutil.copytree(model, path)
    f = path / "model.safetensors"
    with f.open("r+b") as fh:
        fh.truncate(f.stat().st_size - 1000)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cp", "2"], r"1 \* 2 = 2 ranks, but the job has 1 MPI ranks"),
        (["--tp", "2", "--cp", "2"], r"2 \* 2 = 4 ranks, but the job has 1 MPI ranks"),
        (
            ["--prompt-token-ids", "1,1000"],
            r"prompt token ids \[1000\] are outside the vocabulary \[0, 1000\)",
        ),
        (["--max-new-tokens", "0"], "max_new_tokens must be a positive integer, got 0"),
        (["--max-new-tokens", "-3"], "max_new_tokens must be a positive integer"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top-p", "0"], r"top_p must be in \(0, 1\]"),
        (["--top-k", "-2"], "top_k must be a non-negative integer"),
        (["--tokens-per-block", "0"], "tokens_per_block"),
        (["--max-tokens", "0"], "max_tokens"),
        (["--max-batch-tokens", "0"], "max_batch_tokens must be a positive integer, got 0"),
    ],
)
def test_cli_bad_input(model, capsys, extra, message):
    import re

    argv = ["--model", str(model), "--prompt-token-ids", "1,2", *extra]
    assert generate_main(argv) == 2
    err = capsys.readouterr().err
    assert "helix generate: error: " in err and re.search(message, err), err


def test_cli_bad_files(model, truncated_model, tmp_path, capsys):
    def error(argv: list[str]) -> str:
        assert generate_main(["--prompt-token-ids", "1,2", *argv]) == 2
        return capsys.readouterr().err

    assert "no_such_dir" in error(["--model", str(tmp_path / "no_such_dir")])
    err = error(["--model", str(truncated_model)])
    assert str(truncated_model / "model.safetensors") in err and "truncated or corrupt" in err
    bad_json = tmp_path / "helix.json"
    bad_json.write_text("{ not json")
    assert "invalid JSON" in error(["--model", str(model), "--config", str(bad_json)])
    unknown = tmp_path / "helix.yaml"
    unknown.write_text("context_parallel_size: 1\nbogus_key: 3\n")
    assert "bogus_key" in error(["--model", str(model), "--config", str(unknown)])
    assert "cannot read" in error(["--model", str(model), "--config", str(tmp_path / "missing.yaml")])
    too_big = tmp_path / "cp2.yaml"
    too_big.write_text("context_parallel_size: 2\n")
    assert "but the job has 1 MPI ranks" in error(["--model", str(model), "--config", str(too_big)])
    # Prompt ids are checked against config.json before the (here corrupt) weights are read.
    err = error(["--model", str(truncated_model), "--prompt-token-ids", "5,1000"])
    assert "outside the vocabulary" in err and "truncated" not in err


def test_cli_config_file_with_overrides(model, tmp_path, capsys):
    cfg = tmp_path / "helix.yaml"
    cfg.write_text("context_parallel_size: 2\nkv_cache_config: {tokens_per_block: 8, max_tokens: 64}\n")
    assert (
        generate_main(
            [
                "--model",
                str(model),
                "--config",
                str(cfg),
                "--cp",
                "1",
                "--prompt-token-ids",
                "1,2",
                "--max-new-tokens",
                "2",
            ]
        )
        == 0
    )
    assert "of 8" in capsys.readouterr().out  # 64 tokens / 8 per block, from the file; cp from the flag


def test_truncated_checkpoint_fails_before_any_compute(truncated_model):
    from helix.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="model.safetensors"):
        LLM(truncated_model, progress=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt-token-ids", "1,x"], "expected comma-separated integers"),
        (["--prompt-token-ids", ","], "expected at least one token id"),
        (["--dtype", "float16", "--prompt-token-ids", "1"], "invalid choice"),
        ([], "give at least one --prompt or --prompt-token-ids"),
    ],
)
def test_cli_argument_errors(model, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        generate_main(["--model", str(model), *argv])
    assert exc.value.code != 0
    captured = capsys.readouterr()
    assert message in captured.err + str(exc.value.code)


def test_wuv_before_exchange_is_the_default_at_cp1_on_the_cpu(model, llm):
    """W_UV before the exchange is the default on the CPU at cp = 1, where it gives the same bits as the
    latent exchange (absorbed form; the merge of one state multiplies by exactly 1), and off with cp > 1 or
    on CUDA."""
    from helix import _core
    from helix.engine import default_wuv_before_exchange

    assert default_wuv_before_exchange(1, "cpu")
    assert not default_wuv_before_exchange(2, "cpu") and not default_wuv_before_exchange(1, "cuda")
    latent = LLM(
        model,
        ParallelConfig(tokens_per_block=4),
        max_batch_tokens=8,
        wuv_before_exchange=False,
        progress=False,
    )
    assert llm.engine.wuv_before_exchange and not latent.engine.wuv_before_exchange
    greedy = SamplingParams(max_new_tokens=6, ignore_eos=True)
    logits = {}
    _core.set_attention_form("absorbed")
    try:
        for name, engine in (("default", llm), ("latent", latent)):
            rows = logits[name] = []
            engine.generate(PROMPTS, greedy, on_logits=lambda i, row, rows=rows: rows.append((i, row.copy())))
    finally:
        _core.set_attention_form("auto")
    assert [i for i, _ in logits["default"]] == [i for i, _ in logits["latent"]]
    for (_, a), (_, b) in zip(logits["default"], logits["latent"], strict=True):
        np.testing.assert_array_equal(a, b)
