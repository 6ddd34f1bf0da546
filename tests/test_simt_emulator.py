"""The SIMT emulator (HELIX_ENABLE_CUDA=EMULATOR): cuda/ kernels under different thread schedules.

The emulator resumes the fibers of a block in the order HELIX_SIMT_SCHEDULE names (forward, reverse,
random:<seed>). A kernel whose threads exchange data only across proper barriers gives bitwise-identical
results under every order; a missing __syncthreads / __syncwarp shows up as a difference. Skipped on real
GPU builds and builds without CUDA (the emulator's own unit tests are in tests/cpp/test_simt.cpp).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from helix import _core

cuda = _core.cuda
pytestmark = pytest.mark.skipif(not cuda.emulated(), reason="not the SIMT-emulator build")
SCHEDULES = ["forward", "reverse", "random:1", "random:20240601"]


def _bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32).astype(ml_dtypes.bfloat16)


def _under_each_schedule(monkeypatch: pytest.MonkeyPatch, fn) -> list:
    results = []
    for schedule in SCHEDULES:
        monkeypatch.setenv("HELIX_SIMT_SCHEDULE", schedule)
        results.append(fn())
    return results


def _assert_bitwise_equal(results: list) -> None:
    first = results[0]
    for schedule, other in zip(SCHEDULES[1:], results[1:], strict=True):
        for a, b in zip(first, other, strict=True):
            assert a.tobytes() == b.tobytes(), f"schedule {schedule} changed the result"


def test_emulated_device_is_reported():
    assert cuda.built_with_cuda() and cuda.device_count() == 1
    assert cuda.device_name() == "Helix SIMT emulator (CPU)"


@pytest.mark.parametrize("kernel", ["simple", "tensor_core"])
def test_attention_is_schedule_independent(monkeypatch, kernel):
    # 3 query tokens of a causal chunk over 100 keys, 40 heads (two head tiles, the second partial),
    # 3 splits (so merge_states runs too): every barrier of both kernels is exercised.
    rng = np.random.default_rng(11)
    S, H, D, R, T = 100, 40, 576, 512, 3
    q = _bf16(rng, (T, H, D))
    kv = _bf16(rng, (S, D))
    kv_pos = np.arange(S, dtype=np.int64)
    q_pos = np.arange(S - T, S, dtype=np.int64)

    def run():
        return cuda.mla_attention(q, kv, q_pos, kv_pos, 0.07, R, kernel=kernel, num_splits=3)

    _assert_bitwise_equal(_under_each_schedule(monkeypatch, run))


def test_merge_states_is_schedule_independent(monkeypatch):
    rng = np.random.default_rng(12)
    N, M, D = 200, 6, 516  # N > 128 parts: the strided LSE loop; D % 4 == 0: the float4 path
    o_parts = rng.standard_normal((N, M, D)).astype(np.float32)
    lse_parts = (rng.standard_normal((N, M)) * 4).astype(np.float32)
    lse_parts[:50] = -np.inf

    def run():
        return cuda.merge_states(o_parts, lse_parts)

    _assert_bitwise_equal(_under_each_schedule(monkeypatch, run))


def test_moe_experts_is_schedule_independent(monkeypatch):
    # 16 tokens x top-3 over local experts 1..6 (id 7 is another rank's): expert 1 gets all 16 rows, so
    # the GEMV takes hidden 1040 in two K tiles (1024 + 16); the plan's scan and every barrier run.
    rng = np.random.default_rng(13)
    T, K, hidden, F = 16, 3, 1040, 24
    h = rng.standard_normal((T, hidden)).astype(np.float32)
    t = np.arange(T)
    idx = np.stack([np.ones(T), 2 + t % 3, 5 + t % 3], axis=1).astype(np.int64)
    w = rng.random((T, K)).astype(np.float32)
    gate_up = _bf16(rng, (6, 2 * F, hidden))
    down = _bf16(rng, (6, hidden, F))

    def run():
        return (cuda.moe_experts(h, idx, w, gate_up, down, 1),)

    _assert_bitwise_equal(_under_each_schedule(monkeypatch, run))


def test_translator_reads_aligned_static_shared_arrays():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "cuda" / "emulator" / "translate.py"
    spec = importlib.util.spec_from_file_location("simt_translate", path)
    translate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(translate)
    src = "__global__ void k() {\n  __shared__ __align__(16) float xs[4][8];\n}\n"
    out = translate.translate(src, "k.cu")
    assert "static_shared" in out and "float (&xs)[4][8]" in out and "> 16 ?" in out
    with pytest.raises(translate.TranslateError, match="initializer"):
        translate.translate("__global__ void k() {\n  __shared__ float a = 0;\n}\n", "k.cu")


def test_bad_schedule_is_an_error(monkeypatch):
    monkeypatch.setenv("HELIX_SIMT_SCHEDULE", "sideways")
    with pytest.raises(_core.HelixError, match="HELIX_SIMT_SCHEDULE"):
        cuda.merge_states(np.zeros((2, 3, 8), np.float32), np.zeros((2, 3), np.float32))
    # The failed call does not poison the next one (cuda/device.cu clears the runtime's last error).
    monkeypatch.delenv("HELIX_SIMT_SCHEDULE")
    o, lse = cuda.merge_states(np.zeros((2, 3, 8), np.float32), np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(lse, np.full((3,), np.log(2.0), np.float32))


def test_benchmarks_refuse_to_time_the_emulator():
    from helix.bench import cuda_layer, cuda_ops

    with pytest.raises(_core.HelixError, match="SIMT emulator mean nothing"):
        cuda_ops.run(quick=True)
    with pytest.raises(_core.HelixError, match="SIMT emulator mean nothing"):
        cuda_layer.run([1], 64, 1)


def test_benchmark_scripts_run_in_smoke_mode(tmp_path, capsys):
    """Every code path of the GPU benchmarks (cuda/bench.cu, the engine step on a V3-headed layer, the
    JSON and the tables), so that the first GPU run does not fail in them."""
    import json

    from helix.bench import cuda_layer, cuda_ops

    assert cuda_ops.main(["--smoke", "--json", str(tmp_path / "ops.json")]) == 0
    layer_args = ["--smoke", "--context", "100", "--batch", "1", "2", "--steps", "1"]
    assert cuda_layer.main([*layer_args, "--json", str(tmp_path / "layer.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("SMOKE RUN") == 2 and "paged_mla_attention" in out and "merge_states" in out
    ops = json.loads((tmp_path / "ops.json").read_text())
    assert ops["smoke"] and [r["op"] for r in ops["rows"]].count("paged_mla_attention") == 5
    assert [r["op"] for r in ops["rows"]].count("moe_experts") == 2
    layer = json.loads((tmp_path / "layer.json").read_text())
    assert [r["batch"] for r in layer["rows"]] == [1, 2]
    assert all(r["step_ms_median"] > 0 for r in layer["rows"])
