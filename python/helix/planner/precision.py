"""Number formats: bytes per stored value, the bytes of exchanged activations and softmax statistics,
and ``Precision`` (which format the weights, the KV cache, the attention math and lm_head use)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import _unknown

__all__ = ["PRECISIONS", "Precision"]


# Bytes per stored value. fp4 is NVFP4: 4-bit E2M1 values plus one FP8 (E4M3) scale per 16 values, i.e.
# 4.5 bits (NVIDIA, "Introducing NVFP4 for efficient and accurate low-precision inference", 2025). fp8's
# block scales (one fp32 per 128x128 block in DeepSeek's checkpoints, FACTS §3) add 0.02% and are ignored.
PRECISIONS: dict[str, float] = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5625}

# Activations exchanged between GPUs are bf16; softmax statistics (max and sum, or one LSE) fp32.
_ACT_BYTES = 2.0
_STAT_BYTES = 8.0


@dataclass(frozen=True)
class Precision:
    weights: str = "bf16"
    kv: str = "bf16"
    attn_math: str = ""  # tensor-core precision of the attention matmuls; "" = the KV precision
    lm_head: str = "bf16"  # quantized checkpoints keep lm_head in bf16 (FACTS §3)

    def __post_init__(self) -> None:
        for key in ("weights", "kv", "lm_head"):
            if getattr(self, key) not in PRECISIONS:
                raise _unknown("precision", getattr(self, key), PRECISIONS)
        if self.attn_math and self.attn_math not in PRECISIONS:
            raise _unknown("precision", self.attn_math, PRECISIONS)

    @property
    def attention(self) -> str:
        return self.attn_math or self.kv
