"""The opt-in "bf16" compute precision (helix.precision): helix.LLM(precision=...) and --precision of helix
generate / helix serve, end to end on the tiny model against the float64 reference model, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helix.generate_cli import main as generate_main
from helix.reference_model import ReferenceModel
from helix.serve.cli import build_parser as serve_parser
from helix.tiny import TINY_DEFAULT_CONFIG, make_tiny_model
from tolerances import tol

_core = pytest.importorskip("helix._core")
from helix import LLM, SamplingParams, ops  # noqa: E402

SELF = _core.self_communicator()
PATHS = ops.kernel_paths()
HAS_BF16 = PATHS.get("avx512_bf16") == "" or PATHS.get("amx") == ""
needs_bf16 = pytest.mark.skipif(
    not HAS_BF16, reason="no AVX512_BF16 or AMX-BF16 on this CPU: bf16 is refused"
)
# 40 prompt tokens: the prefill's linear calls (T = 40 >= LINEAR_BF16_MIN_TOKENS) take the bf16 paths.
PROMPT = [int(t) for t in np.random.default_rng(0).integers(1, 999, 40)]
STEPS = 3


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The tiny model with bf16 weights (exact in the reference too) and dense MLPs only: a MoE router on
    bf16-grade activations flips near-tied expert choices now and then (then one logit row moves by ~0.3,
    docs/performance.md 9.7), which would make this a test of luck rather than of the arithmetic."""
    path = tmp_path_factory.mktemp("precision") / "model"
    make_tiny_model(
        path, seed=3, dtype="bfloat16", first_k_dense_replace=TINY_DEFAULT_CONFIG["num_hidden_layers"]
    )
    return path


def greedy_logits(model: Path, precision: str) -> tuple[list[np.ndarray], list[int]]:
    """The logits of each of STEPS greedy tokens after PROMPT (prefill, then decode steps), and the tokens."""
    llm = LLM(model, dtype="bfloat16", precision=precision, progress=False, comm=SELF)
    logits: list[np.ndarray] = []
    llm.add_request(PROMPT, SamplingParams(max_new_tokens=STEPS, temperature=0.0))
    tokens: list[int] = []
    while llm.has_unfinished_requests():
        for out in llm.step(lambda _rid, row: logits.append(np.array(row))):
            tokens = list(out.token_ids)
    return logits, tokens


@needs_bf16
@pytest.mark.parametrize("form", ["auto", "expanded"])
def test_bf16_precision_is_bf16_grade_against_the_float64_reference(model, form):
    """auto: the absorbed form at this prompt length; expanded (forced): rows [k_nope | k_pe | v] rounded to
    bf16 for the one-product kernel (helix_attention_expanded.cpp)."""
    ref = ReferenceModel.from_pretrained(model)
    _core.set_attention_form(form)
    try:
        got, tokens = greedy_logits(model, "bf16")
        assert _core.layers.linear_precision() == "bf16" and ops.kernel_path() in ("amx", "avx512_bf16")
        exact, _ = greedy_logits(model, "float32")  # float32 undoes the process's bf16 settings
    finally:
        _core.set_attention_form("auto")
    assert _core.layers.linear_precision() == "float32" and ops.kernel_path() in ("amx_split", "avx512")
    assert len(got) == len(exact) == STEPS
    seq = list(PROMPT)
    for step, (row, row32) in enumerate(zip(got, exact, strict=True)):
        want = ref.forward(seq)[-1]
        np.testing.assert_allclose(row, want, **tol("model_logits.bf16", "bfloat16"), err_msg=f"step {step}")
        assert not np.array_equal(row, row32), f"step {step}: precision bf16 changed nothing"
        seq.append(tokens[step])


def test_precision_errors_name_the_argument(model):
    with pytest.raises(ValueError, match=r"precision must be one of \('float32', 'bf16'\), got 'fp8'"):
        LLM(model, dtype="bfloat16", precision="fp8", progress=False, comm=SELF)
    with pytest.raises(ValueError, match="precision='bf16' needs dtype='bfloat16'.*got dtype='float32'"):
        LLM(model, precision="bf16", progress=False, comm=SELF)
    with pytest.raises(ValueError, match="precision='bf16' is a CPU option, got device='cuda'"):
        LLM(model, dtype="bfloat16", precision="bf16", device="cuda", progress=False, comm=SELF)
    assert _core.layers.linear_precision() == "float32"  # a refused option changed nothing


@needs_bf16
def test_generate_cli_precision(model, capsys):
    argv = ["--model", str(model), "--prompt-token-ids", ",".join(map(str, PROMPT)), "--max-new-tokens", "2"]
    try:
        assert generate_main([*argv, "--dtype", "bfloat16", "--precision", "bf16"]) == 0
        assert _core.layers.linear_precision() == "bf16"
    finally:
        _core.layers.set_linear_precision("float32")
        ops.set_kernel_path("auto")
    capsys.readouterr()
    assert generate_main([*argv, "--precision", "bf16"]) == 2  # float32 weights
    assert "helix generate: error: precision='bf16' needs dtype='bfloat16'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate_main([*argv, "--precision", "bfloat16"])
    assert "--precision: invalid choice: 'bfloat16'" in capsys.readouterr().err


def test_serve_cli_takes_precision():
    args = serve_parser().parse_args(["--model", "m", "--dtype", "bfloat16", "--precision", "bf16"])
    assert args.precision == "bf16"
    assert serve_parser().parse_args(["--model", "m"]).precision == "float32"
