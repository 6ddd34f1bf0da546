#include "decoder.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace helix {

namespace {

// One step's state: the backend, the config, the weights, the step's arrays and shapes.
struct Step {
  Backend& b;
  const EngineConfig& c;
  const WeightViews& weights;
  EngineTimings& t;
  StepArrays a;
  int64_t T, B, L, H;
  const BatchView& batch;

  template <class T>
  T* buf(Buffer role, int64_t count) {
    return static_cast<T*>(b.scratch(role, static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T)));
  }
  const TensorView& w(const std::string& name) const { return weights.at(name); }
  const TensorView& lw(int64_t layer, const char* name) const { return w(layer_weight_name(layer, name)); }

  // y[rows, N] (+)= x[rows, K] @ weight[N, K]^T (dense rows).
  void linear(const float* x, int64_t rows, const TensorView& weight, float* y, bool accumulate = false) {
    const int64_t N = weight.dim(0), K = weight.dim(1);
    b.linear(
        LinearParams{x, weight.data, y, rows, N, K, K, N, weight.dtype, accumulate, DType::Float32, DType::Float32});
  }
  // Per-head y[t, h] = weight[first_head + h] x[t, h] for H heads of x (rows ldx apart, heads x_stride apart).
  void head_linear(const float* x, int64_t ldx, int64_t x_stride, const TensorView& weight, int64_t first_head,
                   int64_t H, float* y, int64_t ldy, int64_t y_stride) {
    const int64_t N = weight.dim(1), K = weight.dim(2);
    const auto* w0 = static_cast<const unsigned char*>(weight.data) + first_head * N * K * dtype_size(weight.dtype);
    b.head_linear(HeadLinearParams{x, w0, y, T, H, N, K, ldx, x_stride, ldy, y_stride, weight.dtype, DType::Float32});
  }
  // y[rows, D] = rms_norm(x) * weight, x and y rows ld apart (y may be x).
  void rms_norm(const float* x, const TensorView& weight, float* y, int64_t rows, int64_t D, int64_t ld) {
    b.rms_norm(RmsNormParams{x, weight.data, y, rows, D, ld, ld, c.rms_norm_eps, DType::Float32});
  }
  void all_reduce(float* x) {
    b.all_reduce(x, T * c.hidden_size);
    b.mark(&t.allreduce_s);
  }

  void embed(const TensorView& table, float* h);
  void layer(int64_t l, float* h);
  void attention_block(int64_t l, float* h);
  void ffn_block(int64_t l, const float* x, float* y);
  void swiglu(int64_t l, const char* mlp, int64_t F, const float* x, float* y, bool accumulate);
  void moe(int64_t l, const float* x, float* y);
  void lm_head(const float* h, const TensorView& norm, const TensorView& head, float* logits, float* before_norm);
  void final_hidden(const float* h, float* hidden);
};

// h [T, hidden] = rows of `table` (the model's or the MTP layer's embedding): this rank's vocabulary shard,
// zeros elsewhere, summed over the ranks.
void Step::embed(const TensorView& table, float* h) {
  const int64_t Vs = c.vocab_shard();
  b.embedding(EmbeddingParams{a.tokens, table.data, h, T, Vs, c.hidden_size, c.rank * Vs, table.dtype});
  b.mark(&t.other_s);
  all_reduce(h);
}

// h += attention(h), then h += ffn(h): decoder layer l (the MTP layer's block is layer num_layers).
void Step::layer(int64_t l, float* h) {
  const int64_t hid = c.hidden_size;
  attention_block(l, h);
  float* x = buf<float>(Buffer::Normed, T * hid);
  rms_norm(h, lw(l, "post_attention_layernorm"), x, T, hid, hid);
  float* y = buf<float>(Buffer::Output, T * hid);
  ffn_block(l, x, y);
  all_reduce(y);
  b.add_residual(h, y, T * hid, l, Block::Ffn);
}

// h += o_proj(helix_attention(...)) of layer l, all-reduced.
void Step::attention_block(int64_t l, float* h) {
  const int64_t hid = c.hidden_size, Htp = c.heads_tp(), Hc = c.heads_chunk(), R = c.kv_lora_rank,
                P = c.qk_rope_head_dim, Dn = c.qk_nope_head_dim, Dv = c.v_head_dim, D = R + P, Dq = Dn + P,
                W = c.wuv_before_exchange ? Dv : R;
  float* x = buf<float>(Buffer::Normed, T * hid);
  float* q = buf<float>(Buffer::Query, T * Htp * Dq);  // [T, Htp, Dn + P]
  float* kva = buf<float>(Buffer::KvLatent, T * D);    // [T, R + P]: c_kv | k_pe
  rms_norm(h, lw(l, "input_layernorm"), x, T, hid, hid);
  if (c.q_lora_rank > 0) {
    float* qa = buf<float>(Buffer::QueryLora, T * c.q_lora_rank);
    linear(x, T, lw(l, "q_a_proj"), qa);
    rms_norm(qa, lw(l, "q_a_layernorm"), qa, T, c.q_lora_rank, c.q_lora_rank);
    linear(qa, T, lw(l, "q_b_proj"), q);
  } else {
    linear(x, T, lw(l, "q_proj"), q);
  }
  linear(x, T, lw(l, "kv_a_proj_with_mqa"), kva);
  b.mark(&t.linear_s);
  // c_kv = kv_a_layernorm(kva[:, :R]) in place; RoPE on q_pe and k_pe at the global positions.
  rms_norm(kva, lw(l, "kv_a_layernorm"), kva, T, R, D);
  b.rope(RopeParams{q, a.positions, a.rope_inv_freq, T, Htp, Dq, Dn, P, c.rope_attention_factor, DType::Float32});
  b.rope(RopeParams{kva, a.positions, a.rope_inv_freq, T, 1, D, R, P, c.rope_attention_factor, DType::Float32});
  void* new_kv = b.scratch(Buffer::NewKv, static_cast<size_t>(T * D * dtype_size(c.kv_dtype)));
  b.convert(kva, new_kv, c.kv_dtype, T * D);

  HelixAttentionParams p;
  p.new_kv = new_kv;
  p.new_rows = a.new_rows;
  p.q_pos = a.positions;
  p.q_seq = a.q_seq;
  p.pool = b.kv_pool(l);
  p.block_tables = a.block_tables;
  p.kv_pos = a.kv_pos;
  p.num_slots = a.num_slots;
  if (c.wuv_before_exchange) {
    p.w_uv = lw(l, "w_uv").data;
    p.w_uv_dtype = lw(l, "w_uv").dtype;
  }
  p.out = buf<float>(Buffer::Attention, T * Hc * W);
  p.q_expanded = q;  // the CPU may run the expanded form (q_nope | q_pe, W_UK): helix_attention_expanded.hpp
  p.w_uk = lw(l, "w_uk").data;
  p.w_uk_dtype = lw(l, "w_uk").dtype;
  p.Dn = Dn;
  p.T = T;
  p.H = Htp;
  p.D = D;
  p.R = R;
  p.W = W;
  p.B = B;
  p.max_blocks = batch.max_blocks;
  p.tokens_per_block = c.tokens_per_block;
  p.max_num_slots = batch.max_num_slots;
  p.scale = c.softmax_scale;
  p.q_dtype = DType::Float32;
  p.kv_dtype = c.kv_dtype;
  if (!b.expanded_attention(p)) {  // the expanded form reads q_expanded, not the absorbed q
    // Absorb W_UK: q_abs[t, h] = [W_UK[h] q_nope[t, h] | q_pe[t, h]].
    float* q_abs = buf<float>(Buffer::QueryAbsorbed, T * Htp * D);
    head_linear(q, Htp * Dq, Dq, lw(l, "w_uk"), 0, Htp, q_abs, Htp * D, D);
    b.copy_rows(q_abs + R, D, q + Dn, Dq, P, T * Htp);
    p.q = q_abs;
  }
  b.mark(&t.other_s);
  b.helix_attention(p, [&](HelixStage s) { b.mark(s == HelixStage::Exchange ? &t.exchange_s : &t.attention_s); });
  const float* attn = p.out;  // [T, Hc, Dv] after W_UV
  if (!c.wuv_before_exchange) {
    // This rank's chunk is heads [cp_rank * Hc, (cp_rank + 1) * Hc) of its TP rank's W_UV.
    float* attn_v = buf<float>(Buffer::AttentionV, T * Hc * Dv);
    head_linear(p.out, Hc * R, R, lw(l, "w_uv"), c.cp_rank() * Hc, Hc, attn_v, Hc * Dv, Dv);
    attn = attn_v;
    b.mark(&t.attention_s);
  }
  float* y = buf<float>(Buffer::Output, T * hid);
  linear(attn, T, lw(l, "o_proj"), y);
  b.mark(&t.linear_s);
  all_reduce(y);
  b.add_residual(h, y, T * hid, l, Block::Attention);
}

// y (+)= down(silu(gate(x)) * up(x)) of the layer's `<mlp>.gate_up_proj` [2F, hidden] and `<mlp>.down_proj`.
void Step::swiglu(int64_t l, const char* mlp, int64_t F, const float* x, float* y, bool accumulate) {
  float* gu = buf<float>(Buffer::GateUp, T * 2 * F);
  float* act = buf<float>(Buffer::Activation, T * F);
  linear(x, T, lw(l, (std::string(mlp) + ".gate_up_proj").c_str()), gu);
  b.silu_mul(SiluMulParams{gu, act, T, F, DType::Float32});
  linear(act, T, lw(l, (std::string(mlp) + ".down_proj").c_str()), y, accumulate);
}

// y = the routed experts of this rank (expert or tensor parallel) + the shared experts, before the all-reduce.
void Step::moe(int64_t l, const float* x, float* y) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, hid = c.hidden_size;
  float* logits = buf<float>(Buffer::RouterLogits, T * E);
  linear(x, T, lw(l, "gate"), logits);
  MoeRouteParams r{logits,
                   static_cast<const float*>(lw(l, "e_score_correction_bias").data),
                   buf<int32_t>(Buffer::RouteIdx, T * K),
                   buf<float>(Buffer::RouteWeight, T * K),
                   T,
                   E,
                   K,
                   c.n_group,
                   c.topk_group,
                   c.norm_topk_prob,
                   c.routed_scaling_factor};
  b.moe_route(r, l);
  const TensorView& gate_up = lw(l, "experts.gate_up_proj");
  const TensorView& down = lw(l, "experts.down_proj");
  MoeExpertsParams e;
  e.h = x;
  e.topk_idx = r.topk_idx;
  e.topk_weight = r.topk_weight;
  e.gate_up = gate_up.data;
  e.down = down.data;
  e.out = y;  // accumulated into (zeroed by ffn_block)
  e.T = T;
  e.top_k = K;
  e.hidden = hid;
  e.F = c.expert_width();
  e.local_first = c.first_local_expert();
  e.n_local = c.local_experts();
  e.gate_up_dtype = gate_up.dtype;
  e.down_dtype = down.dtype;
  b.moe_experts(e);
  if (c.n_shared_experts > 0) {
    swiglu(l, "shared_experts", c.n_shared_experts * c.moe_intermediate_size / c.world(), x, y, true);
  }
}

void Step::ffn_block(int64_t l, const float* x, float* y) {
  if (c.is_moe_layer(l)) {
    b.zero(y, static_cast<size_t>(T * c.hidden_size) * sizeof(float));  // the experts accumulate into y
    moe(l, x, y);
    b.mark(&t.moe_s);
  } else {
    swiglu(l, "mlp", c.intermediate_size / c.world(), x, y, false);
    b.mark(&t.linear_s);
  }
}

// hidden [H, hidden] (host) = the final norm of the hidden rows (already the same on every rank).
void Step::final_hidden(const float* h, float* hidden) {
  const int64_t hid = c.hidden_size;
  float* rows = buf<float>(Buffer::HiddenRows, H * hid);
  b.gather_rows(rows, h, hid, a.hidden_rows, H, hid);
  rms_norm(rows, w("norm"), rows, H, hid, hid);
  b.download(hidden, rows, static_cast<size_t>(H * hid) * sizeof(float));
}

// logits [L, vocab_size] (host) = norm(the logit rows) @ this rank's shard of `head`, gathered (the model's
// norm and lm_head, or the MTP layer's shared_head); before_norm [L, hidden] (host, when wanted) = the rows
// before the norm.
void Step::lm_head(const float* h, const TensorView& norm, const TensorView& head, float* logits, float* before_norm) {
  const int64_t hid = c.hidden_size, Vs = c.vocab_shard(), N = c.world();
  float* rows = buf<float>(Buffer::LogitRows, L * hid);
  b.gather_rows(rows, h, hid, a.logit_rows, L, hid);
  if (before_norm != nullptr) b.download(before_norm, rows, static_cast<size_t>(L * hid) * sizeof(float));
  rms_norm(rows, norm, rows, L, hid, hid);
  float* local = buf<float>(Buffer::Logits, L * Vs);  // [L, Vs]
  linear(rows, L, head, local);
  b.mark(&t.linear_s);
  float* all = buf<float>(Buffer::LogitsGathered, N * L * Vs);  // [N, L, Vs]
  b.all_gather(local, all, L * Vs);
  std::vector<float> host(static_cast<size_t>(N * L * Vs));
  b.download(host.data(), all, host.size() * sizeof(float));
  b.mark(&t.allreduce_s);
  b.finish_step();
  for (int64_t r = 0; r < N; ++r) {
    const int64_t v0 = r * Vs, n = std::min(Vs, c.vocab_size - v0);
    if (n <= 0) continue;
    for (int64_t i = 0; i < L; ++i) {
      std::memcpy(logits + i * c.vocab_size + v0, host.data() + (r * L + i) * Vs, static_cast<size_t>(n) * 4);
    }
  }
  for (int64_t i = 0; i < L * c.vocab_size; ++i) {
    HELIX_CHECK(std::isfinite(logits[i]), "non-finite logits (NaN or Inf) for row ", i / c.vocab_size, " on rank ",
                c.rank);
  }
}

}  // namespace

void run_decoder(Backend& b, const EngineConfig& c, const WeightViews& weights, const StepInput& in, float* logits,
                 float* hidden, EngineTimings& timings) {
  Step s{b, c, weights, timings, b.begin_step(in), in.step.T, in.step.B, in.L, in.H, *in.batch};
  float* h = s.buf<float>(Buffer::Hidden, s.T * c.hidden_size);  // [T, hidden], replicated on every rank
  s.embed(s.w("embed_tokens"), h);
  for (int64_t l = 0; l < c.num_layers; ++l) s.layer(l, h);
  if (s.H > 0) s.final_hidden(h, hidden);
  s.lm_head(h, s.w("norm"), s.w("lm_head"), logits, nullptr);
}

void run_mtp(Backend& b, const EngineConfig& c, const WeightViews& weights, const StepInput& in, const float* hidden,
             float* g, float* logits, EngineTimings& timings) {
  Step s{b, c, weights, timings, b.begin_step(in), in.step.T, in.step.B, in.L, in.H, *in.batch};
  const int64_t hid = c.hidden_size, T = s.T, M = c.mtp_layer();
  float* h = s.buf<float>(Buffer::Hidden, T * hid);         // [T, hidden], replicated on every rank
  float* eh = s.buf<float>(Buffer::MtpInput, T * 2 * hid);  // [T, 2 * hidden]: embedding half first
  s.embed(s.lw(M, "embed_tokens"), h);
  b.rms_norm(RmsNormParams{h, s.lw(M, "enorm").data, eh, T, hid, hid, 2 * hid, c.rms_norm_eps, DType::Float32});
  float* given = s.buf<float>(Buffer::Output, T * hid);  // the model's hidden states (or g), from the host
  b.upload(given, hidden, static_cast<size_t>(T * hid) * sizeof(float));
  b.rms_norm(
      RmsNormParams{given, s.lw(M, "hnorm").data, eh + hid, T, hid, hid, 2 * hid, c.rms_norm_eps, DType::Float32});
  s.linear(eh, T, s.lw(M, "eh_proj"), h);
  b.mark(&timings.linear_s);
  s.layer(M, h);
  s.lm_head(h, s.lw(M, "shared_head.norm"), s.lw(M, "shared_head.head"), logits, g);
}

}  // namespace helix
