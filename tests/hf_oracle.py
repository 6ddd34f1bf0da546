"""Hugging Face transformers' DeepseekV3ForCausalLM as the oracle for small checkpoints (fp32, CPU).

The model is loaded with ``from_pretrained`` straight from the checkpoint folder (our config.json, in
either layout, and our safetensors files: transformers maps the per-expert tensors onto its fused expert
parameters itself). FP8 folders are first rewritten as float32 by ``write_dequantized_copy``, which reads
them with the ``safetensors`` library and dequantizes in torch (independent of helix.checkpoint).

Every call passes an explicit all-ones attention_mask and runs one prompt at a time (no padding), which
avoids the pad == BOS masking pitfall. Greedy decoding recomputes the full sequence each step (no cache):
slow in general, fine for tiny models, and independent of transformers' cache and generation code.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "load_hf_model",
    "hf_logits",
    "hf_logits_float64",
    "hf_mtp_logits",
    "hf_inv_freq",
    "hf_greedy",
    "write_dequantized_copy",
]


@lru_cache(maxsize=8)
def load_hf_model(model_dir: str):
    """DeepseekV3ForCausalLM from ``model_dir`` in float32, eval mode, eager attention and eager (per-expert
    loop) MoE, cached per folder."""
    import torch
    from transformers import DeepseekV3ForCausalLM

    torch.set_num_threads(1)
    model = DeepseekV3ForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    )
    return model.eval()


def hf_logits(model, token_ids: Sequence[int]) -> np.ndarray:
    """Logits [T, V] (float32 computed, returned as float64) of one prompt."""
    import torch

    ids = torch.tensor([list(token_ids)], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    return out.logits[0].double().numpy()


def hf_greedy(
    model, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy continuation of each prompt, EOS ignored: (generated ids per prompt, logits [steps, V] each
    token was chosen from)."""
    tokens_all, logits_all = [], []
    for prompt in prompts:
        seq = list(prompt)
        tokens, steps = [], []
        for _ in range(max_new_tokens):
            logits = hf_logits(model, seq)[-1]
            steps.append(logits)
            tokens.append(int(np.argmax(logits)))
            seq.append(tokens[-1])
        tokens_all.append(tokens)
        logits_all.append(np.stack(steps))
    return tokens_all, logits_all


def write_dequantized_copy(src: str | Path, dst: str | Path) -> Path:
    """Rewrite an FP8 checkpoint folder as float32 (W = q * scale_inv per 128x128 block, in float32), with
    the quantization_config dropped from config.json, so that transformers loads the same weights."""
    import torch
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    block = config.pop("quantization_config", {}).get("weight_block_size", [128, 128])
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(f))
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = tensors[name + "_scale_inv"].float()
            s = s.repeat_interleave(block[0], 0)[: t.shape[0]].repeat_interleave(block[1], 1)[:, : t.shape[1]]
            out[name] = (t.float() * s).contiguous()
        else:
            out[name] = t.float().contiguous()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    for extra in ("tokenizer.json", "tokenizer_config.json"):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)
    return dst


@contextlib.contextmanager
def _without_float32_casts() -> Iterator[None]:
    """Within: transformers' DeepSeek-V3 computes RMSNorm, the router, RoPE angles and the attention
    softmax in the model's dtype instead of forcing float32 (formulas otherwise unchanged), so that a
    float64 model is float64 throughout. Restores the originals on exit."""
    import torch
    import torch.nn.functional as F
    import transformers.models.deepseek_v3.modeling_deepseek_v3 as m

    def norm_forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def router_forward(self, h):
        h = h.view(-1, self.hidden_dim)
        logits = F.linear(h, self.weight.to(h.dtype))
        scores = logits.sigmoid()
        choice = scores + self.e_score_correction_bias.to(h.dtype)
        per_group = self.num_experts // self.num_group
        group_scores = choice.view(-1, self.num_group, per_group).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        mask = group_mask.unsqueeze(-1).expand(-1, self.num_group, per_group).reshape(-1, self.num_experts)
        choice = choice.masked_fill(~mask.bool(), float("-inf"))
        idx = torch.topk(choice, k=self.top_k, dim=-1, sorted=False)[1]
        weights = scores.gather(1, idx)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return logits, weights * self.routed_scaling_factor, idx

    def rope_forward(self, x, position_ids):
        freqs = position_ids[..., None].to(x.dtype) * self.inv_freq.to(x.dtype)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        weights = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = torch.softmax(weights, dim=-1)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    saved = (
        m.DeepseekV3RMSNorm.forward,
        m.DeepseekV3TopkRouter.forward,
        m.DeepseekV3RotaryEmbedding.forward,
        m.eager_attention_forward,
    )
    m.DeepseekV3RMSNorm.forward = norm_forward
    m.DeepseekV3TopkRouter.forward = router_forward
    m.DeepseekV3RotaryEmbedding.forward = rope_forward
    m.eager_attention_forward = attention
    try:
        yield
    finally:
        (
            m.DeepseekV3RMSNorm.forward,
            m.DeepseekV3TopkRouter.forward,
            m.DeepseekV3RotaryEmbedding.forward,
            m.eager_attention_forward,
        ) = saved


def hf_logits_float64(
    model_dir: str, prompts: Sequence[Sequence[int]], inv_freq: np.ndarray | None = None
) -> list[np.ndarray]:
    """Logits [T, V] per prompt from transformers' model run entirely in float64 (a fresh float64 copy).
    transformers computes the RoPE inverse frequencies in float32 whatever the dtype; ``inv_freq`` [P/2]
    replaces them with float64 values (test those separately against ``hf_inv_freq``)."""
    import torch
    from transformers import DeepseekV3ForCausalLM

    model = DeepseekV3ForCausalLM.from_pretrained(
        model_dir, dtype=torch.float64, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    if inv_freq is not None:
        model.model.rotary_emb.inv_freq = torch.tensor(np.asarray(inv_freq, dtype=np.float64))
    out = []
    with _without_float32_casts(), torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([list(prompt)], dtype=torch.long)
            out.append(
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0].numpy()
            )
    return out


def hf_inv_freq(model) -> tuple[np.ndarray, float]:
    """(inv_freq [P/2], attention scaling of cos/sin) as transformers computes them (float32)."""
    rotary = model.model.rotary_emb
    return rotary.inv_freq.double().numpy(), float(rotary.attention_scaling)


def hf_mtp_logits(
    model_dir: str, tokens: Sequence[int], float64: bool = False, inv_freq: np.ndarray | None = None
) -> np.ndarray:
    """Draft logits [n - 1, V] of transformers' own MTP layer (transformers.modeling_layers.MtpModel, loaded
    by its from_pretrained) for row p = 0 .. n - 2 of ``tokens`` [n]: the main model's final hidden state at
    p and token p + 1, at position p. transformers takes the MTP layer's embedding and head from the main
    model; ours may differ (a tiny checkpoint draws them apart), so both are applied here, read with the
    safetensors library. float64: the whole chain in float64 with the float32 casts removed, inv_freq
    replacing transformers' float32 RoPE frequencies (as in hf_logits_float64)."""
    import torch
    from safetensors import safe_open
    from transformers import DeepseekV3ForCausalLM
    from transformers.modeling_layers import MtpModel

    dtype = torch.float64 if float64 else torch.float32
    main = DeepseekV3ForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    if inv_freq is not None:  # the MTP layer shares the main model's rotary embedding
        main.model.rotary_emb.inv_freq = torch.tensor(np.asarray(inv_freq, dtype=np.float64))
    layer = main.config.num_hidden_layers
    # transformers finds MTP tensors by the pattern DeepSeek-V3's 61 layers give (model.layers.61.*).
    main._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{layer}\..*"]
    mtp = MtpModel.from_pretrained(main, device_map={"": "cpu"}).eval()
    own = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(f, framework="pt") as st:
            for name in ("embed_tokens", "shared_head.head"):
                key = f"model.layers.{layer}.{name}.weight"
                if key in st.keys():
                    own[name] = st.get_tensor(key).to(dtype)
    ids = torch.tensor([list(tokens)], dtype=torch.long)
    casts = _without_float32_casts() if float64 else contextlib.nullcontext()
    with casts, torch.no_grad():
        hidden = main.model(
            input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False
        ).last_hidden_state
        embeds = torch.nn.functional.embedding(ids[:, 1:], own["embed_tokens"])
        positions = torch.arange(ids.shape[1] - 1)[None]
        g = mtp.forward_layer(0, hidden[:, :-1], positions, None, inputs_embeds=embeds)  # after post_norm
        return (g[0] @ own["shared_head.head"].T).double().numpy()
