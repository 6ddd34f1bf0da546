"""Model configuration of a DeepSeek-V3-architecture checkpoint, read from its ``config.json``.

Both layouts that occur are accepted:

* the original DeepSeek layout: top-level ``rope_theta``, ``rope_scaling = {"type": "yarn", ...}``,
  ``scoring_func``, ``topk_method``, ``quantization_config``;
* the transformers 5 layout: ``rope_parameters = {"rope_type": "yarn", "rope_theta": ..., ...}``.

Whatever this runtime cannot run exactly (another scoring function, another routing method, tied
embeddings, a rotate-half RoPE layout, another quantization method...) is refused with a
``ModelConfigError`` that names the field and the file. Pure Python: imports nothing compiled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelConfig", "ModelConfigError", "Fp8BlockQuantization", "yarn_get_mscale"]


class ModelConfigError(ValueError):
    """A config.json this runtime cannot run; the message names the field and the file."""


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN magnitude correction ``0.1 * mscale * ln(scale) + 1`` (1 when scale <= 1)."""
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True)
class Fp8BlockQuantization:
    """DeepSeek block FP8: W[i, j] = q[i, j] * weight_scale_inv[i // block_rows, j // block_cols]."""

    fmt: str = "e4m3"
    block_rows: int = 128
    block_cols: int = 128
    activation_scheme: str = "dynamic"

    def __post_init__(self) -> None:
        if self.fmt != "e4m3":
            raise ModelConfigError(f"quantization_config.fmt={self.fmt!r} is not supported (only 'e4m3')")
        if self.block_rows <= 0 or self.block_cols <= 0:
            raise ModelConfigError(
                f"quantization_config.weight_block_size=[{self.block_rows}, {self.block_cols}] "
                "must be positive"
            )


_MISSING = object()


def _as_float(value: int | float, name: str, source: str) -> float:
    """float(value), where a JSON integer beyond float range is a ModelConfigError, not an OverflowError."""
    try:
        return float(value)
    except OverflowError as exc:
        raise ModelConfigError(f"{source}: {name}={value!r} is out of range for a float") from exc


# Keys of the normalized rope_scaling dict (None when RoPE is not scaled).
_YARN_DEFAULTS: dict[str, Any] = {
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": None,
    "mscale_all_dim": None,
    "attention_factor": None,
    "truncate": True,
}


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a DeepSeek-V3 / R1-architecture model (MLA attention, noaux_tc MoE)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    num_experts_per_tok: int
    n_shared_experts: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    norm_topk_prob: bool
    first_k_dense_replace: int
    moe_layer_freq: int = 1
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None (plain RoPE) or {"rope_type": "yarn", "factor", "original_max_position_embeddings",
    # "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate"}.
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    tie_word_embeddings: bool = False
    quantization: Fp8BlockQuantization | None = None
    num_nextn_predict_layers: int = 0
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ModelConfigError:
            return ModelConfigError(f"{self.source}: {name}={getattr(self, name)!r} {why}")

        positive = [
            "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
            "n_routed_experts", "num_experts_per_tok", "n_group", "topk_group", "moe_layer_freq",
            "max_position_embeddings",
        ]  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(name, "must be a positive integer")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            raise bad("q_lora_rank", "must be a positive integer or null (q_proj)")
        for name in ("n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(name, "must be a non-negative integer")
        if self.qk_rope_head_dim % 2:
            raise bad("qk_rope_head_dim", "must be even (RoPE rotates pairs)")
        if self.n_routed_experts % self.n_group:
            raise bad("n_group", f"must divide n_routed_experts={self.n_routed_experts}")
        if self.n_routed_experts // self.n_group < 2:
            raise bad(
                "n_group", "leaves fewer than 2 experts per group (noaux_tc scores a group by its top 2)"
            )
        if self.topk_group > self.n_group:
            raise bad("topk_group", f"exceeds n_group={self.n_group}")
        if self.num_experts_per_tok > self.topk_group * (self.n_routed_experts // self.n_group):
            raise bad("num_experts_per_tok", "exceeds the experts in the topk_group selected groups")
        if self.moe_layer_freq != 1:
            raise bad(
                "moe_layer_freq", "is not supported (only 1: every layer from first_k_dense_replace is MoE)"
            )
        if self.tie_word_embeddings:
            raise bad("tie_word_embeddings", "is not supported (DeepSeek-V3 has an untied lm_head)")
        for name in ("rms_norm_eps", "rope_theta", "routed_scaling_factor"):
            if not (0.0 < getattr(self, name) < math.inf):
                raise bad(name, "must be positive and finite")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            if rs.get("rope_type") != "yarn":
                raise bad("rope_scaling", "has an unsupported rope type (only yarn or none)")
            if not (0.0 < float(rs["factor"]) < math.inf):
                raise bad("rope_scaling", "needs a positive, finite factor")
            for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor"):
                if rs.get(key) is not None and not math.isfinite(rs[key]):
                    raise bad("rope_scaling", f"needs a finite {key}")
            if not (int(rs["original_max_position_embeddings"]) > 0):
                raise bad("rope_scaling", "needs a positive original_max_position_embeddings")

    # ---- derived quantities -------------------------------------------------------------------

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width: qk_nope_head_dim + qk_rope_head_dim."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, layer: int) -> bool:
        """True when decoder layer ``layer`` has a routed MoE FFN (False: dense SiLU-gated MLP)."""
        if not 0 <= layer < self.num_hidden_layers:
            raise IndexError(f"layer {layer} outside [0, {self.num_hidden_layers})")
        return layer >= self.first_k_dense_replace and layer % self.moe_layer_freq == 0

    @property
    def softmax_scale(self) -> float:
        """Attention logit scale: qk_head_dim^-0.5, times yarn_get_mscale(factor, mscale_all_dim)^2 when
        YaRN sets a non-zero mscale_all_dim (as transformers' DeepseekV3Attention does)."""
        scale = self.qk_head_dim**-0.5
        if self.rope_scaling is not None:
            mscale_all_dim = self.rope_scaling.get("mscale_all_dim")
            if mscale_all_dim:
                m = yarn_get_mscale(float(self.rope_scaling["factor"]), float(mscale_all_dim))
                scale *= m * m
        return scale

    @property
    def rope_attention_factor(self) -> float:
        """Factor transformers multiplies cos and sin by (so q_pe.k_pe by its square). 1.0 without YaRN and
        for every DeepSeek release (mscale == mscale_all_dim); otherwise the YaRN rule of transformers."""
        if self.rope_scaling is None:
            return 1.0
        rs = self.rope_scaling
        if rs.get("attention_factor") is not None:
            return float(rs["attention_factor"])
        factor = float(rs["factor"])
        if rs.get("mscale") and rs.get("mscale_all_dim"):
            return yarn_get_mscale(factor, float(rs["mscale"])) / yarn_get_mscale(
                factor, float(rs["mscale_all_dim"])
            )
        return yarn_get_mscale(factor)

    @property
    def mtp_layer_index(self) -> int:
        """Checkpoint layer index of the multi-token-prediction layer (``model.layers.<index>.``): the first
        index after the decoder layers, whether or not the config declares one (num_nextn_predict_layers)."""
        return self.num_hidden_layers

    def expert_group_size(self) -> int:
        return self.n_routed_experts // self.n_group

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> ModelConfig:
        """Read ``<model_dir>/config.json`` (or a path to the json file itself)."""
        path = Path(model_dir)
        if path.is_dir():
            path = path / "config.json"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelConfigError(f"{path}: cannot read the model configuration ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise ModelConfigError(f"{path}: not UTF-8 text ({exc})") from exc
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise ModelConfigError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ModelConfigError(f"{path}: expected a JSON object at the top level")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> ModelConfig:
        """Build from a config.json dict in either layout; refuse what cannot be run exactly."""

        def err(name: str, why: str) -> ModelConfigError:
            return ModelConfigError(f"{source}: {name}={d.get(name)!r} {why}")

        def need(name: str) -> Any:
            if name not in d or d[name] is None:
                raise ModelConfigError(f"{source}: required field {name!r} is missing")
            return d[name]

        def integer(name: str, default: Any = _MISSING, allow_none: bool = False) -> int | None:
            value = need(name) if default is _MISSING else d.get(name, default)
            if value is None and allow_none:
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                raise err(name, "must be an integer")
            return value

        def number(name: str, default: Any = _MISSING) -> float:
            value = need(name) if default is _MISSING else d.get(name, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise err(name, "must be a number")
            return _as_float(value, name, source)

        model_type = d.get("model_type")
        if model_type != "deepseek_v3":
            raise err("model_type", "is not supported (only 'deepseek_v3')")
        if d.get("scoring_func", "sigmoid") != "sigmoid":
            raise err("scoring_func", "is not supported (only 'sigmoid')")
        if d.get("topk_method", "noaux_tc") != "noaux_tc":
            raise err("topk_method", "is not supported (only 'noaux_tc')")
        if d.get("hidden_act", "silu") != "silu":
            raise err("hidden_act", "is not supported (only 'silu')")
        if d.get("attention_bias", False):
            raise err("attention_bias", "is not supported (DeepSeek-V3 projections have no bias)")
        if d.get("rope_interleave", True) is not True:
            raise err("rope_interleave", "is not supported (DeepSeek weights use interleaved RoPE pairs)")
        heads = integer("num_attention_heads")
        kv_heads = d.get("num_key_value_heads", heads)
        if kv_heads not in (None, heads):
            raise err("num_key_value_heads", f"must equal num_attention_heads={heads} (MLA)")
        if d.get("tie_word_embeddings", False):
            raise err("tie_word_embeddings", "is not supported (DeepSeek-V3 has an untied lm_head)")

        rope_theta, rope_scaling = _parse_rope(d, source)
        eos = d.get("eos_token_id")
        if eos is None:
            eos_ids: tuple[int, ...] = ()
        elif isinstance(eos, int) and not isinstance(eos, bool):
            eos_ids = (eos,)
        elif isinstance(eos, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in eos):
            eos_ids = tuple(eos)
        else:
            raise err("eos_token_id", "must be an integer or a list of integers")

        n_group = integer("n_group", 1, allow_none=True)
        topk_group = integer("topk_group", 1, allow_none=True)
        return cls(
            vocab_size=integer("vocab_size"),
            hidden_size=integer("hidden_size"),
            intermediate_size=integer("intermediate_size"),
            moe_intermediate_size=integer("moe_intermediate_size"),
            num_hidden_layers=integer("num_hidden_layers"),
            num_attention_heads=heads,
            q_lora_rank=integer("q_lora_rank", None, allow_none=True),
            kv_lora_rank=integer("kv_lora_rank"),
            qk_nope_head_dim=integer("qk_nope_head_dim"),
            qk_rope_head_dim=integer("qk_rope_head_dim"),
            v_head_dim=integer("v_head_dim"),
            n_routed_experts=integer("n_routed_experts"),
            num_experts_per_tok=integer("num_experts_per_tok"),
            n_shared_experts=integer("n_shared_experts", 0),
            n_group=1 if n_group is None else n_group,
            topk_group=1 if topk_group is None else topk_group,
            routed_scaling_factor=number("routed_scaling_factor", 1.0),
            norm_topk_prob=bool(d.get("norm_topk_prob", False)),
            first_k_dense_replace=integer("first_k_dense_replace", 0),
            moe_layer_freq=integer("moe_layer_freq", 1),
            rms_norm_eps=number("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=integer("max_position_embeddings", 4096),
            bos_token_id=integer("bos_token_id", None, allow_none=True),
            eos_token_ids=eos_ids,
            tie_word_embeddings=False,
            quantization=_parse_quantization(d.get("quantization_config"), source),
            num_nextn_predict_layers=_mtp_layers(d, source),
            source=source,
        )


def _mtp_layers(d: dict[str, Any], source: str) -> int:
    """num_nextn_predict_layers (DeepSeek's key, which transformers 5 also writes), or its transformers alias
    num_mtp_layers; 0 when neither is given or null. Both given and different is ambiguous."""
    given = {k: d[k] for k in ("num_nextn_predict_layers", "num_mtp_layers") if d.get(k) is not None}
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelConfigError(f"{source}: {key}={value!r} must be an integer")
    if len(set(given.values())) > 1:
        raise ModelConfigError(
            f"{source}: num_nextn_predict_layers={given['num_nextn_predict_layers']!r} and its alias "
            f"num_mtp_layers={given['num_mtp_layers']!r} disagree"
        )
    return next(iter(given.values()), 0)


def _parse_rope(d: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, normalized rope_scaling or None) from either layout."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    field_name = "rope_scaling"
    if params is not None:
        if not isinstance(params, dict):
            raise ModelConfigError(f"{source}: rope_parameters={params!r} must be an object")
        scaling, field_name = params, "rope_parameters"
    theta = d.get("rope_theta")
    if isinstance(scaling, dict) and scaling.get("rope_theta") is not None:
        theta = scaling["rope_theta"]
    if theta is None:
        theta = 10000.0
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise ModelConfigError(f"{source}: rope_theta={theta!r} must be a number")
    if scaling is None:
        return _as_float(theta, "rope_theta", source), None
    if not isinstance(scaling, dict):
        raise ModelConfigError(f"{source}: {field_name}={scaling!r} must be an object")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return _as_float(theta, "rope_theta", source), None
    if rope_type != "yarn":
        raise ModelConfigError(
            f"{source}: {field_name} has rope type {rope_type!r}, "
            "which is not supported (only 'yarn' or 'default')"
        )
    if "original_max_position_embeddings" in scaling:
        original = scaling["original_max_position_embeddings"]
    elif "original_max_position_embeddings" in d:
        original = d["original_max_position_embeddings"]
    else:
        raise ModelConfigError(f"{source}: {field_name} (yarn) needs original_max_position_embeddings")
    if isinstance(original, bool) or not isinstance(original, int) or original <= 0:
        raise ModelConfigError(
            f"{source}: {field_name}.original_max_position_embeddings={original!r} must be a positive integer"
        )
    factor = scaling.get("factor")
    if factor is None:
        # transformers' rule when the factor is omitted: the context extension ratio.
        max_pos = d.get("max_position_embeddings", 4096)
        if isinstance(max_pos, bool) or not isinstance(max_pos, int):
            raise ModelConfigError(f"{source}: max_position_embeddings={max_pos!r} must be an integer")
        try:
            factor = max_pos / original
        except OverflowError as exc:
            raise ModelConfigError(f"{source}: max_position_embeddings={max_pos!r} is out of range") from exc
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise ModelConfigError(f"{source}: {field_name}.factor={factor!r} must be a number")
    normalized: dict[str, Any] = {
        "rope_type": "yarn",
        "factor": _as_float(factor, f"{field_name}.factor", source),
    }
    normalized["original_max_position_embeddings"] = int(original)
    for key, default in _YARN_DEFAULTS.items():
        value = scaling.get(key, default)
        if key in ("beta_fast", "beta_slow") and not value:
            value = default
        if value is not None and key != "truncate":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ModelConfigError(f"{source}: {field_name}.{key}={value!r} must be a number")
            value = _as_float(value, f"{field_name}.{key}", source)
        normalized[key] = value
    normalized["truncate"] = bool(normalized["truncate"])
    return _as_float(theta, "rope_theta", source), normalized


def _parse_quantization(q: Any, source: str) -> Fp8BlockQuantization | None:
    if q is None:
        return None
    if not isinstance(q, dict):
        raise ModelConfigError(f"{source}: quantization_config={q!r} must be an object")
    method = q.get("quant_method")
    if method != "fp8":
        raise ModelConfigError(
            f"{source}: quantization_config.quant_method={method!r} is not supported (only 'fp8')"
        )
    block = q.get("weight_block_size", [128, 128])
    if (
        not isinstance(block, list)
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in block)
    ):
        raise ModelConfigError(
            f"{source}: quantization_config.weight_block_size={block!r} must be [rows, cols]"
        )
    try:
        return Fp8BlockQuantization(
            fmt=q.get("fmt", "e4m3"),
            block_rows=block[0],
            block_cols=block[1],
            activation_scheme=q.get("activation_scheme", "dynamic"),
        )
    except ModelConfigError as exc:
        raise ModelConfigError(f"{source}: {exc}") from exc
