"""The CUDA engine against the CPU engine on the tiny model, and device selection.

Tests marked ``gpu`` skip (not fail) when no CUDA GPU is visible. The others always run: asking for
device "cuda" on a build without CUDA or a machine without a GPU raises a clean Python exception (and the
CLI prints one line and exits 2), never a crash.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
from helix import _core
from helix.device import DeviceUnavailableError, cuda_device_for_rank, local_rank
from helix.engine import HelixEngine
from helix.generate import SamplingParams
from helix.generate_cli import main as generate_main
from helix.llm import LLM
from helix.parallel_config import ParallelConfig
from helix.tiny import make_tiny_model
from tolerances import tol

HAS_GPU = _core.cuda.device_count() > 0
gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU visible")
emulator = pytest.mark.skipif(
    not _core.cuda.emulated(), reason="sets the SIMT emulator's device memory (HELIX_SIMT_MEMORY_BYTES)"
)
no_gpu = pytest.mark.skipif(HAS_GPU, reason="a CUDA GPU is visible")
NO_DEVICE = "without CUDA" if not _core.cuda.built_with_cuda() else "no CUDA GPU is visible"
PROMPTS = [list(range(2, 15)), [0, 5, 17, 300, 499, 42], [7, 8]]
# The GPU machine may have mpi4py without an MPI library in the build: one process, no MPI.
SELF = _core.self_communicator()
# bf16 on the GPU rounds every GEMM input to bf16 (the CPU engine keeps fp32 activations and widens bf16
# weights): near-ties may flip, so "most argmaxes" is the claim.
BF16_ARGMAX_AGREEMENT = 0.9


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cuda_engine") / "tiny"
    make_tiny_model(path)
    return path


# ---- always run ----------------------------------------------------------------------------------


@no_gpu
def test_device_cuda_without_gpu_raises_clean_error(model):
    with pytest.raises(DeviceUnavailableError, match=NO_DEVICE):
        cuda_device_for_rank()
    with pytest.raises(DeviceUnavailableError, match=NO_DEVICE):
        HelixEngine(str(model), device="cuda", progress=False)
    with pytest.raises(DeviceUnavailableError, match=NO_DEVICE):
        LLM(model, device="cuda", progress=False)


@no_gpu
def test_cli_device_cuda_without_gpu(model, capsys):
    argv = ["--model", str(model), "--prompt-token-ids", "1,2,3", "--max-new-tokens", "2", "--device", "cuda"]
    assert generate_main(argv) == 2
    err = capsys.readouterr().err
    assert "helix generate: error: device 'cuda'" in err
    assert NO_DEVICE in err
    assert "Traceback" not in err


@no_gpu
def test_compiled_cuda_engine_without_gpu_raises_helix_error():
    """The compiled entry points refuse too (helix.HelixError), for callers that skip helix.device."""
    config = _core.EngineConfig()
    with pytest.raises(_core.HelixError):
        _core.Engine(config, _core.self_communicator(), device="cuda")
    with pytest.raises(_core.HelixError, match="without CUDA|no CUDA device|without NCCL"):
        _core.cuda.nccl_communicator(_core.self_communicator(), 0)


@no_gpu
def test_layer_benchmark_without_gpu_raises_helix_error():
    from helix.bench import cuda_layer

    with pytest.raises(_core.HelixError, match="no CUDA device visible"):
        cuda_layer.run([1], 64, 1)


def test_device_name_is_checked(model):
    with pytest.raises(ValueError, match="device must be one of"):
        HelixEngine(str(model), device="tpu", progress=False)


def test_local_rank_from_launcher_variable(monkeypatch):
    for var in ("MPI_LOCALRANKID", "PMI_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PMI_LOCAL_RANK", "3")
    assert local_rank() == 3
    monkeypatch.setenv("MPI_LOCALRANKID", "1")  # MPICH hydra's name wins
    assert local_rank() == 1


def test_generate_parser_accepts_device():
    from helix.generate_cli import build_parser

    args = build_parser().parse_args(["--model", "m", "--device", "cuda"])
    assert args.device == "cuda"
    assert build_parser().parse_args(["--model", "m"]).device == "cpu"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "m", "--device", "gpu"])


# ---- on a GPU --------------------------------------------------------------------------------------


def _teacher_forced(engine: HelixEngine, tokens: list[int]) -> np.ndarray:
    """Logits [len(tokens), vocab] of one sequence fed as a single prompt chunk."""
    seq = 1000
    engine.add_sequence(seq)
    try:
        t = np.asarray(tokens, np.int64)
        n = len(tokens)
        return engine.step(
            t, np.arange(n, dtype=np.int64), np.array([seq], np.int64), np.zeros(n, np.int64), np.arange(n)
        )
    finally:
        engine.free_sequence(seq)


@gpu
@pytest.mark.parametrize("tpb", [4, 32])
def test_float32_greedy_tokens_and_logits_match_cpu(model, tpb):
    """Batched, chunked greedy decoding on the GPU gives the CPU's tokens and (within tolerance) logits."""
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    runs = {}
    for device in ("cpu", "cuda"):
        pc = ParallelConfig(tokens_per_block=tpb)
        llm = LLM(model, pc, max_batch_tokens=8, progress=False, device=device, comm=SELF)
        logits: dict[int, list[np.ndarray]] = {}

        def keep(i: int, row: np.ndarray, d: dict = logits) -> None:
            d.setdefault(i, []).append(row.copy())

        outs = llm.generate(PROMPTS, params, on_logits=keep)
        runs[device] = ([o.token_ids for o in outs], logits)
    assert runs["cuda"][0] == runs["cpu"][0]
    for i in range(len(PROMPTS)):
        got, want = np.asarray(runs["cuda"][1][i]), np.asarray(runs["cpu"][1][i])
        np.testing.assert_allclose(got, want, **tol("cuda_engine_logits", "float32"))


@gpu
def test_float32_teacher_forced_logits_match_cpu_with_wuv_before_exchange(model):
    tokens = PROMPTS[0] + PROMPTS[1] + PROMPTS[2] * 5
    kw = dict(tokens_per_block=4, max_tokens=256, progress=False, wuv_before_exchange=True, comm=SELF)
    cpu = _teacher_forced(HelixEngine(str(model), **kw), tokens)
    gpu_logits = _teacher_forced(HelixEngine(str(model), device="cuda", **kw), tokens)
    np.testing.assert_allclose(gpu_logits, cpu, **tol("cuda_engine_logits", "float32"))


@gpu
def test_bfloat16_agrees_on_most_argmaxes(model):
    cpu_llm = LLM(model, dtype="bfloat16", progress=False, comm=SELF)
    greedy = SamplingParams(max_new_tokens=24, ignore_eos=True)
    path = PROMPTS[0] + cpu_llm.generate([PROMPTS[0]], greedy)[0].token_ids
    cpu = _teacher_forced(cpu_llm.engine, path)
    gpu_engine = HelixEngine(str(model), dtype="bfloat16", device="cuda", progress=False, comm=SELF)
    gpu_logits = _teacher_forced(gpu_engine, path)
    assert np.isfinite(gpu_logits).all()
    agreement = float(np.mean(gpu_logits.argmax(-1) == cpu.argmax(-1)))
    assert agreement >= BF16_ARGMAX_AGREEMENT, agreement


@gpu
def test_cuda_engine_errors_match_cpu(model):
    """Capacity and bookkeeping errors: same exception types and messages as the CPU engine."""
    kw = dict(tokens_per_block=4, max_tokens=8, progress=False, comm=SELF)
    engines = {d: HelixEngine(str(model), device=d, **kw) for d in ("cpu", "cuda")}
    messages = {}
    for device, eng in engines.items():
        eng.add_sequence(1)
        with pytest.raises(_core.ArgumentError, match="already exists"):
            eng.add_sequence(1)
        n = 12  # 3 blocks of 4 on a pool of 2
        with pytest.raises(_core.KVCacheFullError) as info:
            eng.step(np.arange(n), np.arange(n), np.array([1]), np.zeros(n, np.int64), np.array([n - 1]))
        messages[device] = str(info.value)
        assert eng.num_free_blocks == eng.num_kv_blocks  # nothing was appended
        with pytest.raises(_core.ArgumentError, match="not a sequence of the engine"):
            eng.step(np.arange(2), np.arange(2), np.array([7]), np.zeros(2, np.int64), np.array([1]))
    assert messages["cuda"] == messages["cpu"]


@gpu
def test_cli_on_the_gpu_reports_the_memory_it_holds(model, capsys):
    argv = ["--model", str(model), "--prompt-token-ids", "1,2,3", "--max-new-tokens", "2", "--device", "cuda"]
    assert generate_main(argv) == 0
    out = capsys.readouterr().out
    assert "prompt 3 tokens -> 2 tokens" in out
    line = next(s for s in out.splitlines() if s.startswith("GPU memory held per rank (GiB): ["))
    assert float(line.split("[")[1].split("]")[0]) > 0 and _core.cuda.device_name() in line


@emulator
def test_out_of_gpu_memory_names_what_did_not_fit(model, monkeypatch, capsys):
    """A GPU too small for the KV cache or the weights: helix.DeviceMemoryError naming the rank, what was
    being allocated and its size, how much was free, and what to change; the CLI prints it in one line."""
    kw = dict(tokens_per_block=4, max_tokens=64, progress=False, comm=SELF)
    engine = HelixEngine(str(model), device="cuda", **kw)
    loaded = engine._engine.memory_bytes  # weights + KV cache, before any step
    del engine
    gc.collect()
    monkeypatch.setenv("HELIX_SIMT_MEMORY_BYTES", "1024")
    kv = r"rank 0: the KV cache \(\d+ layers x \d+ blocks x 4 tokens x \d+ float32 = [\d.]+ KiB\) does not"
    kv += r" fit.*cannot allocate .* free of 1.0 KiB.*max_tokens"
    with pytest.raises(_core.DeviceMemoryError, match=kv):
        HelixEngine(str(model), device="cuda", **kw)
    monkeypatch.setenv("HELIX_SIMT_MEMORY_BYTES", str(loaded - 1))
    weight = r"rank 0: weight '.+' \[.+\] float32 \(.+\) does not fit on the GPU after"
    with pytest.raises(_core.DeviceMemoryError, match=weight):
        HelixEngine(str(model), device="cuda", **kw)
    # Loaded, but no room for a step's workspaces.
    monkeypatch.delenv("HELIX_SIMT_MEMORY_BYTES")
    engine = HelixEngine(str(model), device="cuda", **kw)
    monkeypatch.setenv("HELIX_SIMT_MEMORY_BYTES", str(engine._engine.memory_bytes))
    engine.add_sequence(0)
    with pytest.raises(
        _core.DeviceMemoryError, match=r"a step's workspace \(.+\) does not fit.*max_batch_tokens"
    ):
        engine.step(np.arange(3), np.arange(3), np.array([0]), np.zeros(3, np.int64), np.array([2]))
    del engine
    gc.collect()
    monkeypatch.setenv("HELIX_SIMT_MEMORY_BYTES", "1024")
    argv = ["--model", str(model), "--prompt-token-ids", "1,2,3", "--max-new-tokens", "2", "--device", "cuda"]
    assert generate_main(argv) == 2
    err = capsys.readouterr().err
    assert "helix generate: error: rank 0: the KV cache" in err and "Traceback" not in err


@gpu
def test_nccl_communicator_one_rank_from_python():
    if not _core.cuda.built_with_nccl():
        pytest.skip("built without NCCL (the SIMT emulator before its fake NCCL)")
    comm = _core.cuda.nccl_communicator(SELF, 0)
    assert (comm.rank, comm.size) == (0, 1)
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(comm.all_reduce_sum(x), x)
    np.testing.assert_array_equal(comm.all_gather(x), x[None])
    np.testing.assert_array_equal(comm.all_to_all(x[None]), x[None])
    np.testing.assert_array_equal(comm.broadcast(x, 0), x)
    comm.barrier()


def test_cuda_comm_is_checked_and_parsed(model):
    from helix.generate_cli import build_parser

    assert build_parser().parse_args(["--model", "m"]).cuda_comm == "nccl"
    assert build_parser().parse_args(["--model", "m", "--cuda-comm", "host"]).cuda_comm == "host"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model", "m", "--cuda-comm", "mpi"])
    with pytest.raises(ValueError, match="cuda_comm must be one of"):
        HelixEngine(str(model), device="cuda", cuda_comm="mpi", progress=False)


def test_shared_gpus_round_robin():
    if not HAS_GPU:
        with pytest.raises(DeviceUnavailableError):
            cuda_device_for_rank(3, share=True)
        return
    n = _core.cuda.device_count()
    assert cuda_device_for_rank(n + 1, share=True) == 1 % n
    with pytest.raises(DeviceUnavailableError, match="--cuda-comm host"):
        cuda_device_for_rank(n, share=False)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("experts,groups", [(2048, 8), (64, 64)])
def test_cuda_engine_refuses_routers_it_cannot_run(experts, groups):
    """The CUDA router handles <= 1024 experts in <= 32 groups: refused at construction, not at the first
    MoE step."""
    from helix.bench.cuda_layer import SMOKE_LAYER, _config

    layer = {**SMOKE_LAYER, "n_routed_experts": experts, "n_group": groups, "topk_group": 8}
    with pytest.raises(_core.ArgumentError, match="at most 1024 routed experts in at most 32 groups"):
        _core.Engine(_config(layer, 1, 64, 1), SELF, device="cuda")
