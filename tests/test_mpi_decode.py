"""End to end under mpiexec: helix decodes small random DeepSeek-V3 checkpoints exactly as transformers does.

One mpiexec job (4 ranks, tests/mpi/test_decode.py) runs every layout of every shape below on
sub-communicators and writes each run's tokens and logits; transformers' DeepseekV3ForCausalLM (float32,
tests/hf_oracle.py) decodes the same prompts greedily here, once per shape. Every run batches three
prompts of different lengths with different max_new_tokens: 13 tokens (longer than max_batch_tokens = 8,
so prefill is chunked, and not a multiple of tokens_per_block = 4), 6 tokens, and 2 tokens; KV ownership
rotates over the CP ranks every 4 positions. Requests finish at different steps while others continue.

The CLI is tested through mpiexec too: the README's command path, the --json schema and --dump-logits
against transformers at tp2cp2, and a bad layout ending the job quickly with a clear message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helix.tiny import make_tiny_model
from mpi_launch import ROOT, run_mpi
from tolerances import tol

pytestmark = pytest.mark.mpi

PROMPTS = [list(range(2, 15)), [0, 5, 17, 300, 499, 42], [7, 8]]
MAX_NEW = [34, 32, 40]
STEPS = max(MAX_NEW)

# Model shapes (make_tiny_model overrides). Together: q_lora and q_proj, a dense first layer then MoE
# layers, YaRN (mscale == mscale_all_dim and not), both config.json layouts, heads and experts divisible
# by 2, 3 and 4 (B), FP8 blocks with partial edges (F: hidden 192 = 128 + 64).
SHAPES: dict[str, dict] = {
    "A": {},  # the embedded default: q_lora, YaRN, 8 heads, 8 experts, 1 dense + 3 MoE layers
    "B": {
        "seed": 5,
        "layout": "transformers5",
        "q_lora_rank": None,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
        "hidden_size": 192,
        "intermediate_size": 240,
        "moe_intermediate_size": 48,
        "n_routed_experts": 12,
        "n_group": 3,
        "topk_group": 2,
        "num_experts_per_tok": 3,
        "n_shared_experts": 1,
        "num_hidden_layers": 3,
        "first_k_dense_replace": 1,
        "rope_scaling": {"mscale": 0.707, "mscale_all_dim": 1.0, "factor": 16.0},
        "max_position_embeddings": 8192,
    },
    "F": {"seed": 7, "fp8": True, "hidden_size": 192, "num_hidden_layers": 3},
}

# name -> (shape, layout options). Names ending in _cp1 are the unsharded baselines.
RUNS: dict[str, tuple[str, dict]] = {
    "A_cp1": ("A", {"tp": 1, "cp": 1}),
    "A_cp2": ("A", {"tp": 1, "cp": 2}),
    "A_cp4": ("A", {"tp": 1, "cp": 4}),
    "A_tp2cp2": ("A", {"tp": 2, "cp": 2}),
    "A_tp2": ("A", {"tp": 2, "cp": 1}),
    "A_tp4": ("A", {"tp": 4, "cp": 1}),
    "A_cp2_wuv": ("A", {"tp": 1, "cp": 2, "wuv": True}),
    # the latent exchange forced at cp = 1 (A_cp1 takes the default there, W_UV before the exchange)
    "A_cp1_latent": ("A", {"tp": 1, "cp": 1, "wuv": False}),
    "A_tp2cp2_etp": ("A", {"tp": 2, "cp": 2, "etp": True}),
    # the expanded attention form forced for every chunk and decode step: the same tokens as A_cp1 (absorbed)
    "A_cp1_expanded": ("A", {"tp": 1, "cp": 1, "attention_form": "expanded"}),
    "A_cp2_expanded": ("A", {"tp": 1, "cp": 2, "attention_form": "expanded"}),
    "A_cp2_wuv_expanded": ("A", {"tp": 1, "cp": 2, "wuv": True, "attention_form": "expanded"}),
    # a pool of 8 blocks per CP rank: one request at a time fits, the others queue until blocks free
    "A_tp2cp2_queue": ("A", {"tp": 2, "cp": 2, "max_tokens": 64}),
    "B_cp1": ("B", {"tp": 1, "cp": 1}),
    "B_cp2": ("B", {"tp": 1, "cp": 2}),
    "B_cp3": ("B", {"tp": 1, "cp": 3}),
    "B_cp4": ("B", {"tp": 1, "cp": 4}),
    "B_tp2cp2": ("B", {"tp": 2, "cp": 2}),
    "B_cp3_wuv_etp": ("B", {"tp": 1, "cp": 3, "wuv": True, "etp": True}),
    "F_cp1": ("F", {"tp": 1, "cp": 1}),
    "F_cp2": ("F", {"tp": 1, "cp": 2}),
    "F_tp2cp2": ("F", {"tp": 2, "cp": 2}),
}
SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.9}
SAMPLING_RUNS: dict[str, dict] = {
    "S_cp2_seeded": {"tp": 1, "cp": 2, "sampling": {**SAMPLING, "seed": 1234}, "repeat": True},
    "S_tp2cp2_seeded": {"tp": 2, "cp": 2, "sampling": {**SAMPLING, "seed": 1234}},
    "S_cp4_unseeded": {"tp": 1, "cp": 4, "sampling": {**SAMPLING, "seed": None}},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode_models")
    for name, kwargs in SHAPES.items():
        make_tiny_model(root / name, **kwargs)
    return {name: root / name for name in SHAPES}


@pytest.fixture(scope="module")
def hf_reference(models, tmp_path_factory) -> dict[str, tuple[list[list[int]], list[np.ndarray]]]:
    """shape -> transformers' greedy tokens and step logits [STEPS, vocab] per prompt (EOS ignored)."""
    from hf_oracle import hf_greedy, load_hf_model, write_dequantized_copy

    out = {}
    for name, kwargs in SHAPES.items():
        folder = models[name]
        if kwargs.get("fp8"):
            folder = write_dequantized_copy(folder, tmp_path_factory.mktemp(name + "_dequantized"))
        out[name] = hf_greedy(load_hf_model(str(folder)), PROMPTS, STEPS)
    return out


@pytest.fixture(scope="module")
def decoded(models, tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """Runs every layout in one mpiexec job; run name -> its arrays (see tests/mpi/test_decode.py)."""
    out_dir = tmp_path_factory.mktemp("decode_runs")
    runs = [
        {"name": name, "model": str(models[shape]), "prompts": PROMPTS, "max_new_tokens": MAX_NEW, **opts}
        for name, (shape, opts) in RUNS.items()
    ]
    runs += [
        {"name": name, "model": str(models["A"]), "prompts": PROMPTS, "max_new_tokens": MAX_NEW, **opts}
        for name, opts in SAMPLING_RUNS.items()
    ]
    spec = out_dir / "spec.json"
    spec.write_text(json.dumps({"out_dir": str(out_dir), "runs": runs}))
    result = run_mpi(
        4,
        ["-m", "pytest", "tests/mpi/test_decode.py", "-q", "-p", "no:cacheprovider", "-x"],
        timeout=300,
        env={"HELIX_DECODE_SPEC": str(spec)},
    )
    assert result.returncode == 0, result.describe()
    return {name: dict(np.load(out_dir / f"{name}.npz")) for name in [r["name"] for r in runs]}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


@pytest.mark.oracle
@pytest.mark.parametrize("run", list(RUNS))
def test_greedy_matches_transformers(run, decoded, hf_reference):
    """Same greedy tokens for 32-40 steps and logits within 1e-4 of transformers, every request."""
    shape = RUNS[run][0]
    hf_tokens, hf_logits = hf_reference[shape]
    got = decoded[run]
    worst = 0.0
    for i, m in enumerate(MAX_NEW):
        assert got[f"tokens_{i}"].tolist() == hf_tokens[i][:m], f"{run} request {i}"
        np.testing.assert_allclose(
            got[f"logits_{i}"],
            hf_logits[i][:m],
            **tol("decode_logits_vs_hf", "float32"),
            err_msg=f"{run} request {i}",
        )
        worst = max(worst, _max_diff(got[f"logits_{i}"], hf_logits[i][:m]))
    step_ms = float(np.median(got["decode_step_ms"]))
    print(f"{run}: max |logits - transformers| = {worst:.2e}; median decode step {step_ms:.2f} ms")


@pytest.mark.parametrize("run", [r for r in RUNS if not r.endswith("_cp1")])
def test_sharded_equals_unsharded(run, decoded):
    """Every layout's logits equal the single-rank run's to float32 rounding (a different summation order)."""
    base = decoded[RUNS[run][0] + "_cp1"]
    got = decoded[run]
    worst = 0.0
    for i in range(len(PROMPTS)):
        np.testing.assert_array_equal(got[f"tokens_{i}"], base[f"tokens_{i}"], err_msg=f"{run} request {i}")
        np.testing.assert_allclose(
            got[f"logits_{i}"],
            base[f"logits_{i}"],
            **tol("decode_logits_sharded", "float32"),
            err_msg=f"{run} request {i}",
        )
        worst = max(worst, _max_diff(got[f"logits_{i}"], base[f"logits_{i}"]))
    print(f"{run}: max |logits - cp1| = {worst:.2e}")


def test_queued_requests_ran_one_at_a_time(decoded):
    """With a pool of 8 blocks per CP rank no two requests fit together: the peak stays within one request."""
    peak = decoded["A_tp2cp2_queue"]["peak_kv_blocks"]
    # alone, a request holds at most ceil(ceil((13 + 34) / 4) / 2) = 6 blocks per CP rank; any two need >= 10
    assert peak.max() <= 6, peak
    assert (decoded["A_tp2cp2"]["peak_kv_blocks"] > peak).any()


def test_sampling_runs(decoded, hf_reference):
    """Seeded sampling is reproducible (checked in the job) and identical on every rank (checked there too);
    the same seed on another layout samples the same tokens; the samples are not simply greedy."""
    greedy = hf_reference["A"][0]
    a, b = decoded["S_cp2_seeded"], decoded["S_tp2cp2_seeded"]
    for i, m in enumerate(MAX_NEW):
        assert len(a[f"tokens_{i}"]) == m
        assert a[f"tokens_{i}"].tolist() == b[f"tokens_{i}"].tolist()
    assert any(a[f"tokens_{i}"].tolist() != greedy[i][:m] for i, m in enumerate(MAX_NEW))
    c = decoded["S_cp4_unseeded"]
    assert all(len(c[f"tokens_{i}"]) == m for i, m in enumerate(MAX_NEW))


# ---- the command line under mpiexec ------------------------------------------------------------------


def test_readme_run_command(tmp_path):
    """`python -m helix make-tiny-model DIR`, then `mpiexec -n 2 python -m helix generate --model DIR --cp 2`
    (the README's run command path)."""
    model = tmp_path / "tiny"
    made = subprocess.run(
        [sys.executable, "-m", "helix", "make-tiny-model", str(model)],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    result = run_mpi(
        2,
        [
            "-m",
            "helix",
            "generate",
            "--model",
            str(model),
            "--cp",
            "2",
            "--prompt-token-ids",
            "1,2,3",
            "--prompt-token-ids",
            "4,5,6,7,8",
            "--max-new-tokens",
            "12",
            "--ignore-eos",
        ],
        timeout=120,
    )
    assert result.returncode == 0, result.describe()
    out = result.output
    assert "[0] prompt 3 tokens -> 12 tokens (length)" in out, out
    assert "[1] prompt 5 tokens -> 12 tokens (length)" in out, out
    assert "token-to-token latency: median" in out and " ms" in out, out
    assert "peak KV blocks per rank (per layer): [" in out, out
    assert "leaked" not in out, out  # nanobind's shutdown check: no object outlives the interpreter


@pytest.mark.oracle
def test_cli_json_and_dump_logits_tp2cp2(models, hf_reference, tmp_path):
    """--json prints one object as the last line (documented schema); --dump-logits saves [steps, vocab]."""
    dump = tmp_path / "logits.npy"
    result = run_mpi(
        4,
        [
            "-m",
            "helix",
            "generate",
            "--model",
            str(models["A"]),
            "--tp",
            "2",
            "--cp",
            "2",
            "--tokens-per-block",
            "4",
            "--max-batch-tokens",
            "8",
            "--prompt-token-ids",
            ",".join(map(str, PROMPTS[0])),
            "--prompt-token-ids",
            ",".join(map(str, PROMPTS[1])),
            "--max-new-tokens",
            "33",
            "--ignore-eos",
            "--json",
            "--dump-logits",
            str(dump),
        ],
        timeout=120,
    )
    assert result.returncode == 0, result.describe()
    obj = json.loads(result.output.strip().splitlines()[-1])
    assert set(obj) >= {"outputs", "ttl_ms", "tokens_per_s"}
    assert len(obj["outputs"]) == 2
    hf_tokens, hf_logits = hf_reference["A"]
    for i, out in enumerate(obj["outputs"]):
        assert set(out) >= {"prompt_token_ids", "token_ids", "text"}
        assert out["prompt_token_ids"] == PROMPTS[i]
        assert out["token_ids"] == hf_tokens[i][:33]
        assert out["text"] is None  # no tokenizer.json in this folder
    assert all(isinstance(v, float) and v > 0 for v in obj["ttl_ms"]) and len(obj["ttl_ms"]) >= 30
    assert obj["tokens_per_s"] > 0
    logits = np.load(dump)
    assert logits.shape == (33, 1000) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, hf_logits[0][:33], **tol("decode_logits_vs_hf", "float32"))


def test_bad_layout_aborts_the_job_quickly(models):
    """8 heads on cp = 3: every rank refuses with the reason; the job ends non-zero within seconds."""
    start = time.monotonic()
    result = run_mpi(
        3,
        ["-m", "helix", "generate", "--model", str(models["A"]), "--cp", "3", "--prompt-token-ids", "1,2"],
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and not result.timed_out, result.describe()
    assert "num_attention_heads (8) is not divisible by tp * cp = 3" in result.output, result.describe()
    assert elapsed < 30, f"took {elapsed:.1f} s"
