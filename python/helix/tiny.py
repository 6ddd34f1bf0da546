"""Small random DeepSeek-V3-architecture checkpoints: the embedded default and test models.

``make_tiny_model(dir)`` writes ``config.json`` (original DeepSeek layout unless
``layout="transformers5"``) and ``model.safetensors`` (or ``shards`` files plus
``model.safetensors.index.json``). Weights are random but chosen so that loader bugs show: norm weights
away from 1, a non-zero router correction bias (it changes expert selection), and an lm_head scaled up so
that greedy decoding has clear winners. Writing is deterministic for a seed: same seed, same bytes.

CLI: ``python -m helix make-tiny-model DIR [--seed S] [--fp8] [--shards K] [--dtype D] [--layout L] [--mtp]
[--tokenizer]`` (--tokenizer: also a byte-level BPE tokenizer with a chat template, helix.tiny_tokenizer).
"""

from __future__ import annotations

import argparse
import copy
import json
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from helix.config import ModelConfig
from helix.model_tensors import expected_mtp_tensors, expected_tensors, is_fp8_quantizable

__all__ = ["TINY_DEFAULT_CONFIG", "make_tiny_model", "write_safetensors", "quantize_fp8_blockwise", "main"]

# The embedded default: every feature of the architecture at a size that decodes fast on 2 cores.
# YaRN is active: with rope dim 16 and original context 512, pairs 0-3 ramp and 4-7 are interpolated,
# and factor 40 with mscale_all_dim 1 multiplies the softmax scale by 1.369^2.
TINY_DEFAULT_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 1000,
    "hidden_size": 256,
    "intermediate_size": 320,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 4,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_group": 2,
    "topk_group": 1,
    "n_shared_experts": 1,
    "routed_scaling_factor": 2.5,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "topk_method": "noaux_tc",
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 512,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    "max_position_embeddings": 20480,
    "attention_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "tie_word_embeddings": False,
    "num_nextn_predict_layers": 0,
    "torch_dtype": "float32",
}

_DTYPES = {
    "float32": (np.dtype("<f4"), "F32"),
    "float16": (np.dtype("<f2"), "F16"),
    "bfloat16": (np.dtype(ml_dtypes.bfloat16), "BF16"),
}
_FP8 = np.dtype(ml_dtypes.float8_e4m3fn)
_FP8_MAX = 448.0


def write_safetensors(
    path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write a .safetensors file: tensors in name order, contiguous, header padded to 8 bytes.
    Array dtypes: float32/float16/float64, ml_dtypes.bfloat16 / float8_e4m3fn."""
    codes = {
        np.dtype("<f8"): "F64",
        np.dtype("<f4"): "F32",
        np.dtype("<f2"): "F16",
        np.dtype(ml_dtypes.bfloat16): "BF16",
        _FP8: "F8_E4M3",
    }
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in codes:
            raise ValueError(f"write_safetensors: tensor {name!r} has unsupported dtype {arr.dtype}")
        blob = arr.tobytes()  # little-endian on every machine this runs on (dtypes above are '<')
        header[name] = {
            "dtype": codes[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def quantize_fp8_blockwise(
    w: np.ndarray, block: tuple[int, int] = (128, 128)
) -> tuple[np.ndarray, np.ndarray]:
    """DeepSeek block FP8 of a 2-D float32 weight: (q float8_e4m3fn [r, c], scale_inv float32
    [ceil(r/br), ceil(c/bc)]) with W ~= q * scale_inv[i // br, j // bc]; each block's max maps to 448."""
    br, bc = block
    rows, cols = w.shape
    scale = np.empty((-(-rows // br), -(-cols // bc)), dtype=np.float32)
    q = np.empty(w.shape, dtype=_FP8)
    for bi in range(scale.shape[0]):
        for bj in range(scale.shape[1]):
            blk = w[bi * br : (bi + 1) * br, bj * bc : (bj + 1) * bc].astype(np.float32)
            s = np.float32(max(float(np.abs(blk).max()), 1e-12) / _FP8_MAX)
            scale[bi, bj] = s
            q[bi * br : (bi + 1) * br, bj * bc : (bj + 1) * bc] = (blk / s).astype(_FP8)
    return q, scale


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _to_transformers5(d: dict[str, Any]) -> dict[str, Any]:
    """The same model in transformers 5's layout: rope_parameters, no DeepSeek-only routing keys."""
    out = {
        k: v for k, v in d.items() if k not in ("rope_theta", "rope_scaling", "scoring_func", "topk_method")
    }
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": d.get("rope_theta", 10000.0)}
    if d.get("rope_scaling"):
        rs = dict(d["rope_scaling"])
        params.update({k: v for k, v in rs.items() if k != "type"})
        params["rope_type"] = rs.get("type", rs.get("rope_type"))
    out["rope_parameters"] = params
    return out


def _random_weights(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """float32 weights for every tensor of ``shapes`` (name -> shape), drawn in the order of the dict."""
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            w = rng.uniform(0.6, 1.4, size=shape)  # away from 1: a skipped norm shows
        elif name.endswith("e_score_correction_bias"):
            w = rng.normal(0.0, 0.1, size=shape)  # large enough to change which experts are chosen
        elif name.endswith("embed_tokens.weight"):
            w = rng.normal(0.0, 1.0, size=shape)
        elif name == "lm_head.weight" or name.endswith("shared_head.head.weight"):
            w = rng.normal(0.0, 3.0 / np.sqrt(shape[1]), size=shape)  # logits of std ~3: clear argmax
        else:
            w = rng.normal(0.0, 1.0 / np.sqrt(shape[1]), size=shape)  # Linear [out, in]: unit gain
        out[name] = w.astype(np.float32)
    return out


def make_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    *,
    fp8: bool = False,
    shards: int = 1,
    layout: str = "original",
    dtype: str = "float32",
    mtp: bool = False,
    **overrides: Any,
) -> ModelConfig:
    """Write a random DeepSeek-V3-architecture checkpoint to ``out_dir`` and return its ModelConfig.

    overrides: config.json fields replacing TINY_DEFAULT_CONFIG's (dicts such as rope_scaling are merged
    key by key; ``rope_scaling=None`` disables YaRN; ``q_lora_rank=None`` gives q_proj).
    fp8: store the decoder Linear weights as float8_e4m3fn with 128x128 weight_scale_inv blocks (and a
    quantization_config). shards: number of safetensors files (> 1 writes the index). layout: "original"
    or "transformers5". dtype: storage of the unquantized tensors: float32, bfloat16 or float16.
    mtp: also write a multi-token-prediction layer at index num_hidden_layers (num_nextn_predict_layers = 1),
    drawn after the model's weights (which stay those of the same seed without it). Its embedding and
    shared_head.head are drawn apart from the model's (DeepSeek's releases repeat embed_tokens and lm_head
    there): a reader that takes the model's instead shows."""
    if layout not in ("original", "transformers5"):
        raise ValueError(f"layout must be 'original' or 'transformers5', got {layout!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    cfg_dict = _merge(TINY_DEFAULT_CONFIG, overrides)
    cfg_dict["torch_dtype"] = dtype
    if fp8:
        cfg_dict["quantization_config"] = {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
        }
    if mtp:
        cfg_dict["num_nextn_predict_layers"] = 1
    config = ModelConfig.from_dict(cfg_dict, source="make_tiny_model")

    rng = np.random.default_rng(seed)
    weights = _random_weights(expected_tensors(config), rng)
    weights.update(_random_weights(expected_mtp_tensors(config), rng))  # empty without mtp
    np_dtype = _DTYPES[dtype][0]
    tensors: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if fp8 and is_fp8_quantizable(name):
            q, scale_inv = quantize_fp8_blockwise(w)
            tensors[name] = q
            tensors[name + "_scale_inv"] = scale_inv
        elif name.endswith("e_score_correction_bias") or name.endswith("mlp.gate.weight"):
            tensors[name] = w  # the router stays float32, as in DeepSeek's releases
        else:
            tensors[name] = w.astype(np_dtype)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = cfg_dict if layout == "original" else _to_transformers5(cfg_dict)
    (out / "config.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for stale in list(out.glob("*.safetensors")) + [out / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    if shards == 1:
        write_safetensors(out / "model.safetensors", tensors)
    else:
        names = sorted(tensors)
        weight_map: dict[str, str] = {}
        for k in range(shards):
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[k::shards]}
            write_safetensors(out / fname, part)
            weight_map.update({n: fname for n in part})
        total = sum(t.nbytes for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2) + "\n", encoding="utf-8"
        )
    return ModelConfig.from_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    """``make-tiny-model DIR [--seed S] [--fp8] [--shards K] [--dtype D] [--layout L] [--mtp] [--tokenizer]``
    (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="helix make-tiny-model", description="write the embedded default model"
    )
    parser.add_argument("dir", help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp8", action="store_true", help="DeepSeek block-FP8 Linear weights")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--layout", choices=["original", "transformers5"], default="original")
    parser.add_argument("--mtp", action="store_true", help="also a multi-token-prediction layer")
    parser.add_argument(
        "--tokenizer", action="store_true", help="also write a BPE tokenizer with a chat template"
    )
    args = parser.parse_args(argv)
    config = make_tiny_model(
        args.dir,
        seed=args.seed,
        fp8=args.fp8,
        shards=args.shards,
        dtype=args.dtype,
        layout=args.layout,
        mtp=args.mtp,
    )
    if args.tokenizer:
        from helix.tiny_tokenizer import make_tiny_tokenizer

        make_tiny_tokenizer(args.dir, config.vocab_size, seed=args.seed)
    print(
        f"wrote {args.dir}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, {config.n_routed_experts} experts, vocab {config.vocab_size}"
    )
    return 0
