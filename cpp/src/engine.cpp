#include "helix/engine.hpp"

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "helix/engine_common.hpp"
#include "helix/ops/embedding.hpp"
#include "helix/ops/head_linear.hpp"
#include "helix/ops/linear.hpp"
#include "helix/ops/moe_experts.hpp"
#include "helix/ops/moe_route.hpp"
#include "helix/ops/rms_norm.hpp"
#include "helix/ops/rope.hpp"
#include "helix/ops/silu_mul.hpp"

namespace helix {

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Weight {
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
  const float* f32() const { return reinterpret_cast<const float*>(bytes.data()); }
};

// y[T, N] (+)= x[T, K] @ w[N, K]^T (row strides default to dense).
void linear(const float* x, int64_t T, int64_t K, const Weight& w, int64_t N, float* y, bool accumulate) {
  LinearParams p;
  p.x = x;
  p.w = w.bytes.data();
  p.w_dtype = w.dtype;
  p.y = y;
  p.T = T;
  p.N = N;
  p.K = K;
  p.ldx = K;
  p.ldy = N;
  p.accumulate = accumulate;
  linear_cpu(p);
}

// y[T, D] = rms_norm(x[T, :D]) * w, rows ld apart (in place when y == x).
void rms_norm(const float* x, const float* w, float* y, int64_t T, int64_t D, int64_t ld, float eps) {
  RmsNormParams p;
  p.x = x;
  p.w = w;
  p.y = y;
  p.T = T;
  p.D = D;
  p.ldx = ld;
  p.ldy = ld;
  p.eps = eps;
  rms_norm_cpu(p);
}

void silu_mul(const float* gate_up, int64_t T, int64_t F, float* out) {
  SiluMulParams p;
  p.gate_up = gate_up;
  p.out = out;
  p.T = T;
  p.F = F;
  silu_mul_cpu(p);
}

// Per-head W_UK / W_UV (see head_linear.hpp).
void head_linear(const float* x, int64_t ldx, int64_t x_head_stride, const Weight& w, int64_t H, int64_t N, int64_t K,
                 float* y, int64_t ldy, int64_t y_head_stride, int64_t T, int64_t first_head = 0) {
  HeadLinearParams p;
  p.x = x;
  p.w = w.bytes.data() + first_head * N * K * dtype_size(w.dtype);
  p.w_dtype = w.dtype;
  p.y = y;
  p.T = T;
  p.H = H;
  p.N = N;
  p.K = K;
  p.ldx = ldx;
  p.x_head_stride = x_head_stride;
  p.ldy = ldy;
  p.y_head_stride = y_head_stride;
  head_linear_cpu(p);
}

}  // namespace

struct Engine::Impl {
  std::map<std::string, ExpectedWeight> expected;
  std::map<std::string, Weight> weights;
  // Workspaces, resized per step.
  std::vector<float> h, x, q, qa, kva, q_abs, attn, attn_v, y, gu, act, router_logits, route_w, logits_local,
      logits_all;
  std::vector<int32_t> route_idx;
  std::vector<unsigned char> new_kv;

  const Weight& w(const std::string& name) const { return weights.at(name); }
};

namespace {

// h += y; a NaN or Inf is reported with the layer and sub-block that produced it, never decoded silently.
// h is replicated (after the all-reduce), so every rank throws the same error at the same point.
void add_residual(std::vector<float>& h, const std::vector<float>& y, int64_t n, int64_t layer, const char* block,
                  int64_t rank) {
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    h[static_cast<size_t>(i)] += y[static_cast<size_t>(i)];
    finite &= std::isfinite(h[static_cast<size_t>(i)]);
  }
  HELIX_CHECK(finite, "non-finite hidden state (NaN or Inf) after the ", block, " of layer ", layer, " on rank ", rank);
}

const EngineConfig& validated(const EngineConfig& c) {
  validate_engine_config(c);
  return c;
}

}  // namespace

Engine::Engine(const EngineConfig& config, Communicator& world)
    : config_(validated(config)),
      world_(world),
      table_(config_.num_kv_blocks, config_.tokens_per_block, config_.rank % config_.cp, config_.cp) {
  check_engine_world(config_, world);
  const int64_t tp_rank = config_.rank / config_.cp, cp_rank = config_.rank % config_.cp;
  cp_comm_ = world.split(static_cast<int>(tp_rank), static_cast<int>(cp_rank));
  const int64_t D = config_.kv_lora_rank + config_.qk_rope_head_dim;
  pools_.reserve(static_cast<size_t>(config_.num_layers));
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    pools_.emplace_back(config_.num_kv_blocks, config_.tokens_per_block, D, config_.kv_dtype);
  }
  impl_ = std::make_unique<Impl>();
  impl_->expected = expected_weight_shapes(config_);
}

Engine::~Engine() = default;

std::vector<std::string> Engine::expected_weights() const {
  std::vector<std::string> names;
  for (const auto& [n, e] : impl_->expected) names.push_back(n);
  return names;
}

void Engine::set_weight(const std::string& name, const TensorView& w) {
  check_engine_weight(impl_->expected, name, w);
  Weight& dst = impl_->weights[name];
  dst.dtype = w.dtype;
  dst.shape = w.shape;
  dst.bytes.assign(static_cast<const unsigned char*>(w.data), static_cast<const unsigned char*>(w.data) + w.nbytes());
}

void Engine::check_weights() const {
  for (const auto& [n, e] : impl_->expected) {
    HELIX_CHECK(impl_->weights.count(n), "weight '", n, "' was never set on rank ", config_.rank);
  }
}

void Engine::add_sequence(int64_t seq_id, int64_t reserve_tokens) { table_.add_sequence(seq_id, reserve_tokens); }

void Engine::free_sequence(int64_t seq_id) { table_.free_sequence(seq_id); }

void Engine::step(const TensorView& tokens, const TensorView& positions, const TensorView& seq_ids,
                  const TensorView& q_seq_index, const TensorView& logit_rows, const TensorView& logits) {
  check_weights();
  StepPlan plan = check_step_inputs(config_, table_, tokens, positions, seq_ids, q_seq_index, logit_rows, logits);
  const std::vector<int64_t> new_rows = table_.commit_step(plan);  // [T] pool row of each owned token, else -1
  try {
    forward(tokens, step_tokens(positions, seq_ids, q_seq_index), new_rows.data(), logit_rows, logits);
  } catch (...) {
    // A later failure (non-finite values, communication) takes the slots back: the step leaves no trace.
    table_.undo_step(plan);
    throw;
  }
  timings_.steps += 1;
}

void Engine::fill_sequence_random(int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale) {
  std::vector<float> values(static_cast<size_t>(config_.kv_lora_rank + config_.qk_rope_head_dim));  // one row
  StepPlan plan;
  const std::vector<int64_t> rows = commit_fill(table_, seq_id, num_tokens, plan);  // nothing below throws
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    KVPool& pool = pools_[static_cast<size_t>(l)];
    std::mt19937_64 rng(seed + 0x632BE59BD9B4E019ull * static_cast<uint64_t>(l + 1));
    std::uniform_real_distribution<float> uniform(-scale, scale);
    for (int64_t row : rows) {
      if (row < 0) continue;
      for (float& v : values) v = uniform(rng);
      if (pool.dtype() == DType::Float32) {
        std::memcpy(pool.row(row), values.data(), values.size() * 4);
      } else {
        auto* dst = static_cast<bf16_t*>(pool.row(row));
        for (size_t d = 0; d < values.size(); ++d) dst[d] = float_to_bf16(values[d]);
      }
    }
  }
}

void Engine::forward(const TensorView& tokens, const StepTokens& step, const int64_t* new_rows,
                     const TensorView& logit_rows, const TensorView& logits) {
  const EngineConfig& c = config_;
  const int64_t T = step.T, L = logit_rows.dim(0);
  Impl& m = *impl_;
  const int64_t hid = c.hidden_size, N = c.world(), Htp = c.heads_tp(), Hc = c.heads_chunk(), R = c.kv_lora_rank,
                P = c.qk_rope_head_dim, Dn = c.qk_nope_head_dim, Dv = c.v_head_dim, D = R + P, Dq = Dn + P,
                cp_rank = c.rank % c.cp;
  const int64_t* pos = step.positions;
  const int64_t W = c.wuv_before_exchange ? Dv : R;
  double t0 = now(), t1;
  auto lap = [&](double& acc) {
    t1 = now();
    acc += t1 - t0;
    t0 = t1;
  };
  auto all_reduce = [&](std::vector<float>& buf, int64_t count) {
    if (N > 1) world_.all_reduce_sum(buf.data(), count, DType::Float32);
    lap(timings_.allreduce_s);
  };

  // Embedding: this rank's vocabulary shard, zeros elsewhere, summed over ranks.
  m.h.assign(static_cast<size_t>(T * hid), 0.f);
  {
    const Weight& table = m.w("embed_tokens");
    EmbeddingParams p;
    p.ids = tokens.ptr<int64_t>();
    p.table = table.bytes.data();
    p.table_dtype = table.dtype;
    p.out = m.h.data();
    p.T = T;
    p.V = c.vocab_shard();
    p.hidden = hid;
    p.vocab_start = c.rank * c.vocab_shard();
    embedding_cpu(p);
  }
  lap(timings_.other_s);
  all_reduce(m.h, T * hid);

  m.x.resize(static_cast<size_t>(T * hid));
  m.q.resize(static_cast<size_t>(T * Htp * Dq));
  m.kva.resize(static_cast<size_t>(T * D));
  m.q_abs.resize(static_cast<size_t>(T * Htp * D));
  m.attn.resize(static_cast<size_t>(T * Hc * W));
  m.attn_v.resize(static_cast<size_t>(T * Hc * Dv));
  m.y.resize(static_cast<size_t>(T * hid));
  m.new_kv.resize(static_cast<size_t>(T * D * dtype_size(c.kv_dtype)));
  if (c.q_lora_rank > 0) m.qa.resize(static_cast<size_t>(T * c.q_lora_rank));

  for (int64_t l = 0; l < c.num_layers; ++l) {
    auto W_ = [&](const char* n) -> const Weight& { return m.w(layer_weight_name(l, n)); };
    // --- attention -------------------------------------------------------------------------------
    rms_norm(m.h.data(), W_("input_layernorm").f32(), m.x.data(), T, hid, hid, c.rms_norm_eps);
    if (c.q_lora_rank > 0) {
      linear(m.x.data(), T, hid, W_("q_a_proj"), c.q_lora_rank, m.qa.data(), false);
      rms_norm(m.qa.data(), W_("q_a_layernorm").f32(), m.qa.data(), T, c.q_lora_rank, c.q_lora_rank, c.rms_norm_eps);
      linear(m.qa.data(), T, c.q_lora_rank, W_("q_b_proj"), Htp * Dq, m.q.data(), false);
    } else {
      linear(m.x.data(), T, hid, W_("q_proj"), Htp * Dq, m.q.data(), false);
    }
    linear(m.x.data(), T, hid, W_("kv_a_proj_with_mqa"), D, m.kva.data(), false);
    lap(timings_.linear_s);
    // c_kv = kv_a_layernorm(kva[:, :R]) in place; RoPE on q_pe and k_pe at the global positions.
    rms_norm(m.kva.data(), W_("kv_a_layernorm").f32(), m.kva.data(), T, R, D, c.rms_norm_eps);
    RopeParams rp;
    rp.pos = pos;
    rp.inv_freq = c.rope_inv_freq.data();
    rp.T = T;
    rp.P = P;
    rp.attention_factor = c.rope_attention_factor;
    rp.x = m.q.data();
    rp.H = Htp;
    rp.stride = Dq;
    rp.offset = Dn;
    rope_cpu(rp);
    rp.x = m.kva.data();
    rp.H = 1;
    rp.stride = D;
    rp.offset = R;
    rope_cpu(rp);
    // Absorb W_UK: q_abs[t,h] = [W_UK[h] q_nope[t,h] | q_pe[t,h]].
    head_linear(m.q.data(), Htp * Dq, Dq, W_("w_uk"), Htp, R, Dn, m.q_abs.data(), Htp * D, D, T);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < Htp; ++h) {
        std::memcpy(&m.q_abs[(t * Htp + h) * D + R], &m.q[(t * Htp + h) * Dq + Dn], static_cast<size_t>(P) * 4);
      }
    }
    if (c.kv_dtype == DType::Float32) {
      std::memcpy(m.new_kv.data(), m.kva.data(), static_cast<size_t>(T * D) * 4);
    } else {
      auto* dst = reinterpret_cast<bf16_t*>(m.new_kv.data());
      for (int64_t i = 0; i < T * D; ++i) dst[i] = float_to_bf16(m.kva[static_cast<size_t>(i)]);
    }
    lap(timings_.other_s);

    const BatchView batch = table_.batch_view(step.seq_ids, step.B);
    HelixAttentionParams hp;
    hp.q = m.q_abs.data();
    hp.new_kv = m.new_kv.data();
    hp.new_rows = new_rows;
    hp.q_pos = step.positions;
    hp.q_seq = step.q_seq_index;
    hp.pool = pools_[static_cast<size_t>(l)].data();
    hp.block_tables = batch.block_tables.data();
    hp.kv_pos = table_.row_positions();
    hp.num_slots = batch.num_slots.data();
    if (c.wuv_before_exchange) {
      hp.w_uv = W_("w_uv").bytes.data();
      hp.w_uv_dtype = W_("w_uv").dtype;
    }
    hp.out = m.attn.data();
    hp.T = T;
    hp.H = Htp;
    hp.D = D;
    hp.R = R;
    hp.W = W;
    hp.B = step.B;
    hp.max_blocks = batch.max_blocks;
    hp.tokens_per_block = c.tokens_per_block;
    hp.max_num_slots = batch.max_num_slots;
    hp.scale = c.softmax_scale;
    hp.q_dtype = DType::Float32;
    hp.kv_dtype = c.kv_dtype;
    helix_attention_cpu(hp, *cp_comm_, [&](HelixStage stage) {
      lap(stage == HelixStage::Exchange ? timings_.exchange_s : timings_.attention_s);
    });
    const float* attn_out = m.attn.data();  // [T, Hc, Dv] after W_UV
    if (!c.wuv_before_exchange) {
      // This rank's chunk is heads [cp_rank * Hc, (cp_rank + 1) * Hc) of its TP rank's W_UV.
      head_linear(m.attn.data(), Hc * R, R, W_("w_uv"), Hc, Dv, R, m.attn_v.data(), Hc * Dv, Dv, T, cp_rank * Hc);
      attn_out = m.attn_v.data();
      lap(timings_.attention_s);
    }
    linear(attn_out, T, Hc * Dv, W_("o_proj"), hid, m.y.data(), false);
    lap(timings_.linear_s);
    all_reduce(m.y, T * hid);
    add_residual(m.h, m.y, T * hid, l, "attention", c.rank);

    // --- FFN -------------------------------------------------------------------------------------
    rms_norm(m.h.data(), W_("post_attention_layernorm").f32(), m.x.data(), T, hid, hid, c.rms_norm_eps);
    if (c.is_moe_layer(l)) {
      const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, Fm = c.moe_intermediate_size;
      m.router_logits.resize(static_cast<size_t>(T * E));
      m.route_idx.resize(static_cast<size_t>(T * K));
      m.route_w.resize(static_cast<size_t>(T * K));
      linear(m.x.data(), T, hid, W_("gate"), E, m.router_logits.data(), false);
      MoeRouteParams rt;
      rt.logits = m.router_logits.data();
      rt.bias = W_("e_score_correction_bias").f32();
      rt.topk_idx = m.route_idx.data();
      rt.topk_weight = m.route_w.data();
      rt.T = T;
      rt.E = E;
      rt.top_k = K;
      rt.n_group = c.n_group;
      rt.topk_group = c.topk_group;
      rt.norm_topk_prob = c.norm_topk_prob;
      rt.routed_scaling_factor = c.routed_scaling_factor;
      moe_route_cpu(rt);
      const int64_t n_local = c.expert_tensor_parallel ? E : E / N;
      const int64_t Fe = c.expert_tensor_parallel ? Fm / N : Fm;
      const int64_t first = c.expert_tensor_parallel ? 0 : c.rank * n_local;
      std::fill(m.y.begin(), m.y.end(), 0.f);
      const Weight& gu = W_("experts.gate_up_proj");
      const Weight& dn = W_("experts.down_proj");
      MoeExpertsParams ex;
      ex.h = m.x.data();
      ex.topk_idx = m.route_idx.data();
      ex.topk_weight = m.route_w.data();
      ex.gate_up = gu.bytes.data();
      ex.gate_up_dtype = gu.dtype;
      ex.down = dn.bytes.data();
      ex.down_dtype = dn.dtype;
      ex.out = m.y.data();
      ex.T = T;
      ex.top_k = K;
      ex.hidden = hid;
      ex.F = Fe;
      ex.local_first = first;
      ex.n_local = n_local;
      moe_experts_cpu(ex);
      if (c.n_shared_experts > 0) {
        const int64_t Fs = c.n_shared_experts * Fm / N;
        m.gu.resize(static_cast<size_t>(T * 2 * Fs));
        m.act.resize(static_cast<size_t>(T * Fs));
        linear(m.x.data(), T, hid, W_("shared_experts.gate_up_proj"), 2 * Fs, m.gu.data(), false);
        silu_mul(m.gu.data(), T, Fs, m.act.data());
        linear(m.act.data(), T, Fs, W_("shared_experts.down_proj"), hid, m.y.data(), true);
      }
      lap(timings_.moe_s);
    } else {
      const int64_t F = c.intermediate_size / N;
      m.gu.resize(static_cast<size_t>(T * 2 * F));
      m.act.resize(static_cast<size_t>(T * F));
      linear(m.x.data(), T, hid, W_("mlp.gate_up_proj"), 2 * F, m.gu.data(), false);
      silu_mul(m.gu.data(), T, F, m.act.data());
      linear(m.act.data(), T, F, W_("mlp.down_proj"), hid, m.y.data(), false);
      lap(timings_.linear_s);
    }
    all_reduce(m.y, T * hid);
    add_residual(m.h, m.y, T * hid, l, "FFN", c.rank);
  }

  // --- final norm and the vocabulary-sharded lm_head, gathered over all ranks -----------------------
  m.x.resize(static_cast<size_t>(L * hid));
  for (int64_t i = 0; i < L; ++i) {
    const int64_t r = logit_rows.ptr<int64_t>()[i];
    rms_norm(m.h.data() + r * hid, m.w("norm").f32(), m.x.data() + i * hid, 1, hid, hid, c.rms_norm_eps);
  }
  const int64_t Vs = c.vocab_shard();
  m.logits_local.resize(static_cast<size_t>(L * Vs));
  linear(m.x.data(), L, hid, m.w("lm_head"), Vs, m.logits_local.data(), false);
  lap(timings_.linear_s);
  m.logits_all.resize(static_cast<size_t>(N * L * Vs));
  if (N > 1) {
    world_.all_gather(m.logits_local.data(), m.logits_all.data(), static_cast<size_t>(L * Vs) * 4);
  } else {
    m.logits_all = m.logits_local;
  }
  float* out = logits.ptr<float>();
  for (int64_t r = 0; r < N; ++r) {
    const int64_t v0 = r * Vs, n = std::min(Vs, c.vocab_size - v0);
    if (n <= 0) continue;
    for (int64_t i = 0; i < L; ++i) {
      std::memcpy(out + i * c.vocab_size + v0, m.logits_all.data() + (r * L + i) * Vs, static_cast<size_t>(n) * 4);
    }
  }
  lap(timings_.allreduce_s);
  for (int64_t i = 0; i < L * c.vocab_size; ++i) {
    HELIX_CHECK(std::isfinite(out[i]), "non-finite logits (NaN or Inf) for row ", i / c.vocab_size, " on rank ",
                c.rank);
  }
}

}  // namespace helix
