"""What the planner knows of a model: ``ModelSpec`` (sizes and derived parameter counts), the presets,
and the readers of a Hugging Face config.json (``model_from_config``, ``get_model``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PlannerError, _unknown

__all__ = ["MODEL_PRESETS", "ModelSpec", "get_model", "model_from_config"]


@dataclass(frozen=True)
class ModelSpec:
    """What decode needs to know of a model. ``attention`` is "mla" (DeepSeek) or "gqa" (Llama)."""

    name: str
    attention: str
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int  # GQA: KV heads; MLA: 1 (one latent shared by all heads)
    vocab: int
    dense_intermediate: int
    n_dense_layers: int  # the first n_dense_layers are dense, the rest MoE (== n_layers for dense models)
    head_dim: int = 0  # GQA only
    q_lora_rank: int = 0  # MLA; 0 = plain q_proj
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    moe_intermediate: int = 0
    n_experts: int = 0
    top_k: int = 0
    n_shared_experts: int = 0
    tied_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ("mla", "gqa"):
            raise PlannerError(f"model {self.name}: attention must be 'mla' or 'gqa', got {self.attention!r}")
        for key in ("hidden", "n_layers", "n_heads", "n_kv_heads", "vocab"):
            if getattr(self, key) <= 0:
                raise PlannerError(f"model {self.name}: {key} must be positive, got {getattr(self, key)}")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            raise PlannerError(f"model {self.name}: n_dense_layers must be in [0, n_layers]")
        if self.n_heads % self.n_kv_heads:
            raise PlannerError(
                f"model {self.name}: n_heads ({self.n_heads}) is not divisible by "
                f"n_kv_heads ({self.n_kv_heads})"
            )
        if self.attention == "mla":
            if self.n_kv_heads != 1:
                raise PlannerError(f"model {self.name}: MLA has one latent KV head (n_kv_heads=1)")
            for key in ("kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_head_dim"):
                if getattr(self, key) <= 0:
                    raise PlannerError(f"model {self.name}: MLA needs {key} > 0")
        elif self.head_dim <= 0:
            raise PlannerError(f"model {self.name}: GQA needs head_dim > 0")
        if self.n_dense_layers < self.n_layers:
            for key in ("moe_intermediate", "n_experts", "top_k"):
                if getattr(self, key) <= 0:
                    raise PlannerError(f"model {self.name}: MoE layers need {key} > 0")
            if self.top_k > self.n_experts:
                raise PlannerError(f"model {self.name}: top_k ({self.top_k}) > n_experts ({self.n_experts})")
        if self.n_dense_layers > 0 and self.dense_intermediate <= 0:
            raise PlannerError(f"model {self.name}: dense layers need dense_intermediate > 0")

    # --- derived sizes (parameter counts, values per token) ---------------------------------------------

    @property
    def is_moe(self) -> bool:
        return self.n_dense_layers < self.n_layers

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    @property
    def attn_shared_params(self) -> int:
        """Attention input projections every attention rank holds whole (MLA: q_a, kv_a; GQA: none)."""
        if self.attention == "mla":
            q_a = self.hidden * self.q_lora_rank if self.q_lora_rank else 0
            return q_a + self.hidden * (self.kv_lora_rank + self.qk_rope_dim)
        return 0

    @property
    def attn_q_params_per_head(self) -> int:
        """Per query head: the query projection (and, for MLA, W_UK and W_UV of kv_b)."""
        if self.attention == "mla":
            q_in = self.q_lora_rank or self.hidden
            q = q_in * (self.qk_nope_dim + self.qk_rope_dim)
            kv_b = self.kv_lora_rank * (self.qk_nope_dim + self.v_head_dim)
            return q + kv_b
        return self.hidden * self.head_dim

    @property
    def attn_kv_params_per_kv_head(self) -> int:
        """GQA: k_proj + v_proj per KV head. MLA: 0 (the latent projection is in attn_shared_params)."""
        return 2 * self.hidden * self.head_dim if self.attention == "gqa" else 0

    @property
    def o_dim_per_head(self) -> int:
        return self.v_head_dim if self.attention == "mla" else self.head_dim

    @property
    def o_proj_params(self) -> int:
        return self.n_heads * self.o_dim_per_head * self.hidden

    @property
    def kv_values_per_kv_head(self) -> int:
        """Cached values per token per layer per KV head (MLA: the latent c_kv plus the shared k_pe)."""
        if self.attention == "mla":
            return self.kv_lora_rank + self.qk_rope_dim
        return 2 * self.head_dim

    @property
    def attn_flops_per_position_per_head(self) -> int:
        """Score plus weighted sum, per cached position per query head (MLA absorbed: dot over R+P, sum
        over R; GQA: dot and sum over head_dim)."""
        if self.attention == "mla":
            return 2 * (self.kv_lora_rank + self.qk_rope_dim) + 2 * self.kv_lora_rank
        return 4 * self.head_dim

    @property
    def exchange_dim_per_head(self) -> int:
        """Width of one head's partial output in the Helix all-to-all: the latent R for MLA (the
        reference implementation exchanges before W_UV, FACTS §1), head_dim for GQA."""
        return self.kv_lora_rank if self.attention == "mla" else self.head_dim

    @property
    def dense_ffn_params(self) -> int:
        return 3 * self.hidden * self.dense_intermediate

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden * self.moe_intermediate

    @property
    def router_params(self) -> int:
        return self.hidden * self.n_experts

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    def total_params(self) -> int:
        attn = (
            self.attn_shared_params
            + self.n_heads * self.attn_q_params_per_head
            + self.n_kv_heads * self.attn_kv_params_per_kv_head
            + self.o_proj_params
        )
        moe = (
            self.n_experts * self.expert_params
            + self.n_shared_experts * self.expert_params
            + self.router_params
        )
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return (
            self.n_layers * attn
            + self.n_dense_layers * self.dense_ffn_params
            + self.n_moe_layers * moe
            + embed
        )


# DeepSeek-V3 dims: FACTS §3 (the model's config.json). R1 has V3's architecture.
_DEEPSEEK_V3 = dict(
    attention="mla",
    hidden=7168,
    n_layers=61,
    n_heads=128,
    n_kv_heads=1,
    vocab=129280,
    dense_intermediate=18432,
    n_dense_layers=3,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_dim=128,
    qk_rope_dim=64,
    v_head_dim=128,
    moe_intermediate=2048,
    n_experts=256,
    top_k=8,
    n_shared_experts=1,
)

MODEL_PRESETS: dict[str, ModelSpec] = {
    "deepseek-v3": ModelSpec(name="deepseek-v3", **_DEEPSEEK_V3),
    "deepseek-r1": ModelSpec(name="deepseek-r1", **_DEEPSEEK_V3),
    # Llama 3.1 405B config.json: hidden 16384, 126 layers, 128 q heads / 8 KV heads of 128, FFN 53248,
    # vocab 128256, untied embeddings.
    "llama-405b": ModelSpec(
        name="llama-405b",
        attention="gqa",
        hidden=16384,
        n_layers=126,
        n_heads=128,
        n_kv_heads=8,
        head_dim=128,
        vocab=128256,
        dense_intermediate=53248,
        n_dense_layers=126,
    ),
}


def model_from_config(cfg: dict[str, Any], name: str = "config") -> ModelSpec:
    """Adapter from a Hugging Face config.json dict (DeepSeek-V2/V3 MLA, or a Llama-like GQA model)."""

    def need(key: str) -> Any:
        if key not in cfg:
            raise PlannerError(f"{name}: config.json has no {key!r}")
        return cfg[key]

    hidden = int(need("hidden_size"))
    n_layers = int(need("num_hidden_layers"))
    n_heads = int(need("num_attention_heads"))
    vocab = int(need("vocab_size"))
    tied = bool(cfg.get("tie_word_embeddings", False))
    if "kv_lora_rank" in cfg and cfg.get("kv_lora_rank"):
        n_experts = int(cfg.get("n_routed_experts") or 0)
        # moe_layer_freq is 1 in every released DeepSeek-V3 config; other values are not modelled.
        if n_experts and int(cfg.get("moe_layer_freq", 1)) != 1:
            raise PlannerError(f"{name}: moe_layer_freq != 1 is not supported")
        return ModelSpec(
            name=name,
            attention="mla",
            hidden=hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=1,
            vocab=vocab,
            dense_intermediate=int(cfg.get("intermediate_size", 0)),
            n_dense_layers=min(n_layers, int(cfg.get("first_k_dense_replace", 0))) if n_experts else n_layers,
            q_lora_rank=int(cfg.get("q_lora_rank") or 0),
            kv_lora_rank=int(need("kv_lora_rank")),
            qk_nope_dim=int(need("qk_nope_head_dim")),
            qk_rope_dim=int(need("qk_rope_head_dim")),
            v_head_dim=int(need("v_head_dim")),
            moe_intermediate=int(cfg.get("moe_intermediate_size", 0)),
            n_experts=n_experts,
            top_k=int(cfg.get("num_experts_per_tok") or 0),
            n_shared_experts=int(cfg.get("n_shared_experts") or 0),
            tied_embeddings=tied,
        )
    n_kv = int(cfg.get("num_key_value_heads") or n_heads)
    head_dim = int(cfg.get("head_dim") or hidden // n_heads)
    return ModelSpec(
        name=name,
        attention="gqa",
        hidden=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab=vocab,
        dense_intermediate=int(need("intermediate_size")),
        n_dense_layers=n_layers,
        tied_embeddings=tied,
    )


def get_model(name_or_path: str) -> ModelSpec:
    """A preset name, or the path of a config.json (or of a folder holding one)."""
    key = name_or_path.lower()
    if key in MODEL_PRESETS:
        return MODEL_PRESETS[key]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise PlannerError(f"model config {str(path)!r} does not exist")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PlannerError(f"model config {str(path)!r} is not valid JSON: {exc}") from exc
        return model_from_config(cfg, name=path.parent.name or path.stem)
    raise _unknown("model", name_or_path, MODEL_PRESETS)
