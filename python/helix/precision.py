"""The compute precision of a process's CPU engine: ``helix.LLM(..., precision=...)``, ``--precision``.

- "float32" (the default): float32-grade results on every x86 CPU. Activations stay float32; bf16 weights
  and keys are exact; the bf16 product paths split x into bf16 hi + lo (two products per multiply-add).
- "bf16" (opt-in; bf16-grade, as vLLM CPU and PyTorch run bf16 models): the linear layers with bf16 weights
  round x once to bf16 in calls of >= 16 tokens (prefill chunks, large batches; one VDPBF16PS or AMX product
  per multiply-add, twice the split paths' rate), and the MLA attention runs its one-product kernels on bf16
  keys (q and the softmax weights rounded to bf16: MlaKernelPath Amx where AMX is usable, else Avx512Bf16);
  in the expanded form (long prefill chunks) its up-projected rows [k_nope | k_pe | v] are bf16 too.
  Decode-sized linear calls (< 16 tokens) stay float32-grade. Needs dtype="bfloat16" (the bf16 paths run on
  bf16 weights and keys), device="cpu", and a CPU with AVX512_BF16 or AMX-BF16.

The setting is process-wide (the C++ kernels read it), like set_kernel_path: every rank of a job gets the
same option. Measured cost and gain: docs/performance.md section 9.7.
"""

from __future__ import annotations

__all__ = ["PRECISIONS", "apply_precision", "bf16_attention_path", "check_precision"]

PRECISIONS = ("float32", "bf16")


def bf16_attention_path() -> str:
    """The one-product MLA kernel path of "bf16" on this CPU ('amx' or 'avx512_bf16'); ValueError naming
    what the CPU (or OS) lacks when it has neither."""
    from helix import ops

    paths = ops.kernel_paths()
    for name in ("amx", "avx512_bf16"):
        if paths.get(name) == "":
            return name
    raise ValueError(
        "precision='bf16' needs a CPU with AVX512_BF16 or AMX-BF16: "
        f"amx: {paths.get('amx')}; avx512_bf16: {paths.get('avx512_bf16')}"
    )


def check_precision(precision: str, *, dtype: str, device: str) -> str:
    """The precision if this process can run it with these weights and device, else ValueError naming the
    argument that prevents it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        if device != "cpu":
            raise ValueError(f"precision='bf16' is a CPU option, got device={device!r}")
        if dtype != "bfloat16":
            raise ValueError(
                f"precision='bf16' needs dtype='bfloat16' (it runs on bf16 weights), got dtype={dtype!r}"
            )
        bf16_attention_path()
    return precision


def apply_precision(precision: str) -> None:
    """Sets the process's linear precision and MLA kernel path for a checked precision. "float32" undoes an
    earlier "bf16" of this process (attention path back to auto) and otherwise leaves a forced kernel path
    (helix.ops.set_kernel_path) as it is."""
    from helix import _core, ops

    if precision == "bf16":
        ops.set_kernel_path(bf16_attention_path())
    elif _core.layers.linear_precision() == "bf16":
        ops.set_kernel_path("auto")
    _core.layers.set_linear_precision(precision)
