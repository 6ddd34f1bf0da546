"""The SIMT emulator (HELIX_ENABLE_CUDA=EMULATOR): cuda/ kernels under different schedules, the
translator's view of the kernels' parameters, and the CUDA engine at an H100's split counts.

The emulator runs the blocks of a grid, and resumes the fibers of a block, in the order
HELIX_SIMT_SCHEDULE names (forward, reverse, random:<seed>). A kernel whose threads exchange data only
across proper barriers, and whose blocks do not depend on each other's order, gives bitwise-identical
results under every order; a missing __syncthreads / __syncwarp shows up as a difference. Skipped on real
GPU builds and builds without CUDA (the emulator's own unit tests are in tests/cpp/test_simt.cpp).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helix import _core
from helix.engine import HelixEngine
from helix.tiny import make_tiny_model
from tolerances import tol

cuda = _core.cuda
pytestmark = pytest.mark.skipif(not cuda.emulated(), reason="not the SIMT-emulator build")
SCHEDULES = ["forward", "reverse", "random:1", "random:20240601"]
ROOT = Path(__file__).resolve().parents[1]


def _translate_module():
    path = ROOT / "cuda" / "emulator" / "translate.py"
    spec = importlib.util.spec_from_file_location("simt_translate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bf16(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32).astype(ml_dtypes.bfloat16)


def _under_each_schedule(monkeypatch: pytest.MonkeyPatch, fn, schedules: list[str] = SCHEDULES) -> list:
    results = []
    for schedule in schedules:
        monkeypatch.setenv("HELIX_SIMT_SCHEDULE", schedule)
        results.append(fn())
    return results


def _assert_bitwise_equal(results: list, schedules: list[str] = SCHEDULES) -> None:
    first = results[0]
    for schedule, other in zip(schedules[1:], results[1:], strict=True):
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
    idx = np.stack([np.ones(T), 2 + t % 3, 5 + t % 3], axis=1).astype(np.int32)
    w = rng.random((T, K)).astype(np.float32)
    gate_up = _bf16(rng, (6, 2 * F, hidden))
    down = _bf16(rng, (6, hidden, F))

    def run():
        return (cuda.moe_experts(h, idx, w, gate_up, down, 1),)

    _assert_bitwise_equal(_under_each_schedule(monkeypatch, run))


def test_translator_reads_aligned_static_shared_arrays():
    translate = _translate_module()
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


# ---- the CUDA engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("simt") / "tiny"
    make_tiny_model(path)
    return path


def test_engine_is_schedule_independent(monkeypatch, model):
    """Every kernel of a step (prompt chunk, then a decode step whose attention has 2 splits and whose
    experts run on the device) gives bitwise-identical logits whatever order its blocks and threads run in."""
    kw = dict(tokens_per_block=4, max_tokens=64, progress=False, comm=_core.self_communicator())
    engine = HelixEngine(str(model), device="cuda", **kw)
    prompt = np.arange(3, 43, dtype=np.int64)  # 40 tokens: 2 key tiles at the decode step

    def run():
        engine.add_sequence(0)
        try:
            n = len(prompt)
            chunk = engine.step(prompt, np.arange(n), np.array([0]), np.zeros(n, np.int64), np.arange(n))
            one = np.array([n], np.int64)
            step = engine.step(one, one, np.array([0]), np.zeros(1, np.int64), np.arange(1))
            return chunk, step
        finally:
            engine.free_sequence(0)

    schedules = SCHEDULES[:3]  # a whole step per schedule: forward, reverse and one random order
    _assert_bitwise_equal(_under_each_schedule(monkeypatch, run, schedules), schedules)


# One decode step of sequence 0 after `ctx - 1` random keys, in a fresh process (the SM count is read once
# per thread): argv model ctx out.npy.
_DECODE_AFTER_RANDOM_KEYS = """
import sys
import numpy as np
from helix import _core
from helix.engine import HelixEngine
model, ctx, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
engine = HelixEngine(model, device="cuda", tokens_per_block=64, max_tokens=ctx, progress=False,
                     comm=_core.self_communicator())
engine.add_sequence(0)
engine._engine.fill_sequence_random(0, ctx - 1, 7, 1.0)
pos, one = np.array([ctx - 1], np.int64), np.zeros(1, np.int64)
np.save(out, engine.step(np.array([5], np.int64), pos, one, one, np.arange(1)))
"""


def _decode_with_sms(model: Path, sms: int, ctx: int, tmp_path: Path) -> tuple[np.ndarray, list[int]]:
    """Logits of the step and the split count (grid.x) of every attention launch, with `sms` SMs."""
    log, out = tmp_path / f"launches_{sms}.log", tmp_path / f"logits_{sms}.npy"
    build = str(Path(_core.__file__).parents[1])  # the package this test imported (e.g. the sanitized one)
    env = dict(os.environ, HELIX_SIMT_SMS=str(sms), HELIX_SIMT_LAUNCH_LOG=str(log))
    env["PYTHONPATH"] = os.pathsep.join([build, env.get("PYTHONPATH", "")])
    env.pop("HELIX_SIMT_SCHEDULE", None)
    cmd = [sys.executable, "-c", _DECODE_AFTER_RANDOM_KEYS, str(model), str(ctx), str(out)]
    subprocess.run(cmd, env=env, check=True, timeout=300)
    splits = [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("attention_")]
    return np.load(out), splits


def test_engine_reaches_an_h100_split_count(model, tmp_path):
    """With an H100's 132 SMs a decode step over 8192 slots splits attention 256 ways (the plan's cap and
    merge_states' largest N) in every layer; the logits equal those of 4 splits (2 SMs) up to fp32
    summation order. The engine tests' own contexts (< 64 slots) never split more than 2 ways."""
    big, big_splits = _decode_with_sms(model, 132, 8192, tmp_path)
    small, small_splits = _decode_with_sms(model, 2, 8192, tmp_path)
    layers = 4
    assert big_splits == [256] * layers and small_splits == [4] * layers
    np.testing.assert_allclose(big, small, **tol("cuda_engine_logits", "float32"))


# ---- kernel parameters --------------------------------------------------------------------------------

# Params structs that never reach a kernel: the cuBLAS entry points take them, and the fake cuBLAS checks
# that their operands are device memory (cuda/emulator/cublas.cpp).
HOST_ONLY_PARAMS = {"LinearParams", "HeadLinearParams"}


def test_translator_names_kernel_parameters_and_struct_fields():
    translate = _translate_module()
    src = """struct P {
  const float* in;  // [n]
  float *out, *aux[2];
  int64_t n = 0, m{3};
  DType dtype = DType::Float32;
  bool empty() const { return n == 0; }
  static constexpr int kMax = 4;
 private:
  int hidden_ : 3;
};
__global__ void __launch_bounds__(64) k(P p, const int* __restrict__ flag, int64_t chunk) {}
void f(P p) { k<<<1, 64>>>(p, nullptr, 2); }
"""
    assert translate.struct_fields(src)["P"] == ["in", "out", "aux", "n", "m", "dtype", "hidden_"]
    assert translate.kernel_params(src) == {"k": [("p", "P"), ("flag", None), ("chunk", "int64_t")]}
    out = translate.translate(src, "k.cu")
    assert '::simt::launch(k, "k", "p{in,out,aux,n,m,dtype,hidden_},flag,chunk", 64, 1, 64)' in out


def test_every_params_struct_of_a_cuda_launch_reaches_the_pointer_check():
    """Each params struct a CUDA launch takes (declared in cuda.hpp or an op header, ops/<op>.hpp) is passed
    to a kernel by value (so its pointer fields are checked at every launch, and the translator read its
    field names), or is a cuBLAS operand (checked there). A new struct must be put in one of the two
    classes."""
    translate = _translate_module()
    include = ROOT / "cpp" / "include" / "helix"
    text = "".join(h.read_text() for h in [include / "cuda.hpp", *sorted((include / "ops").glob("*.hpp"))])
    structs = translate.struct_fields(text)
    params = set(re.findall(r"\blaunch_\w+\(const (\w+Params)&", text))
    assert {"PagedMlaAttentionParams", "MergeStatesParams", "MoeExpertsParams", "RmsNormParams"} <= params
    launched = {
        type_
        for cu in (ROOT / "cuda").glob("*.cu")
        for kernel in translate.kernel_params(cu.read_text()).values()
        for _, type_ in kernel
    }
    for name in sorted(params):
        assert structs[name], f"the translator read no fields of {name}"
        assert (name in launched) != (name in HOST_ONLY_PARAMS), (
            f"{name} must reach a kernel by value or be listed in HOST_ONLY_PARAMS (a cuBLAS operand)"
        )
