// The expanded form of helix_attention's local attention, and the cost model that picks it
// (helix/helix_attention_expanded.hpp). The up-projections run on linear_cpu with the weights as stored (bf16:
// the AVX512_BF16 split or AMX path, float32-grade); with W = Dv the attention itself is the MLA kernel on
// per-head expanded rows (float32, or bf16 under a one-product kernel path: precision "bf16"), with W = R
// float32 GEMMs (linear_cpu) around a softmax of its own.
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_* helpers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "helix/helix_attention_expanded.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "exp2_avx512.hpp"
#include "helix/error.hpp"
#include "helix/ops/attention.hpp"
#include "helix/ops/linear.hpp"
#include "mla_attention_tiles.hpp"

namespace helix {

namespace {

std::atomic<AttentionForm> g_form{AttentionForm::Auto};
std::atomic<int64_t> g_head_group{0};  // heads per up-projection call; 0: expanded_head_group's choice

// The up-projected rows of one head group, up [S, g, Dv + Dn] float32, are kept to about this many bytes
// (g = 8 heads at S = 4096, Dv = Dn = 128; all 128 heads up to S = 512): each group packs the latents
// [S, R] once (2·S·R·4 bytes of bf16 hi/lo panels), so g = 8 cuts that cost 16x against two calls per head,
// while the group's rows stay a few times L2 and within L3.
constexpr int64_t kHeadGroupBytes = int64_t{32} << 20;

int64_t pool_row(const HelixAttentionParams& p, int64_t b, int64_t slot) {
  const int64_t tpb = p.tokens_per_block;
  return int64_t{p.block_tables[b * p.max_blocks + slot / tpb]} * tpb + slot % tpb;
}

// tokens[b]: the query tokens of sequence b, in order.
std::vector<std::vector<int64_t>> tokens_by_sequence(const HelixAttentionParams& p) {
  std::vector<std::vector<int64_t>> tokens(static_cast<size_t>(p.B));
  for (int64_t t = 0; t < p.T; ++t) tokens[p.q_seq[t]].push_back(t);
  return tokens;
}

// Visible (query, key) pairs of sequence b's query tokens over its keys on this rank.
int64_t visible_pairs(const HelixAttentionParams& p, int64_t b, const std::vector<int64_t>& tokens) {
  std::vector<int64_t> pos(static_cast<size_t>(p.num_slots[b]));
  for (size_t k = 0; k < pos.size(); ++k) pos[k] = p.kv_pos[pool_row(p, b, static_cast<int64_t>(k))];
  std::sort(pos.begin(), pos.end());
  int64_t pairs = 0;
  for (const int64_t t : tokens) pairs += std::upper_bound(pos.begin(), pos.end(), p.q_pos[t]) - pos.begin();
  return pairs;
}

}  // namespace

void set_attention_form(AttentionForm form) { g_form.store(form); }
void set_expanded_head_group(int64_t heads) {
  HELIX_CHECK_ARG(heads >= 0, "argument 'heads' must be >= 0 (0: chosen per call), got ", heads);
  g_head_group.store(heads);
}
AttentionForm attention_form() { return g_form.load(); }

std::string_view attention_form_name(AttentionForm form) {
  switch (form) {
    case AttentionForm::Auto:
      return "auto";
    case AttentionForm::Absorbed:
      return "absorbed";
    case AttentionForm::Expanded:
      return "expanded";
  }
  return "unknown";
}

AttentionForm parse_attention_form(std::string_view name, const char* arg) {
  for (const AttentionForm f : {AttentionForm::Auto, AttentionForm::Absorbed, AttentionForm::Expanded}) {
    if (name == attention_form_name(f)) return f;
  }
  throw ArgumentError(
      detail::concat("argument '", arg, "' must be 'auto', 'absorbed' or 'expanded', got '", name, "'"));
}

namespace {

// The float32 GEMMs of the W = R expanded path (linear_cpu, float32 weights) run at about half the rate of the
// attention kernel: on Zen 4 (1 thread, T = 512 over S = 4096 keys, H = 128) 45 against 87 GFLOP/s, so that
// path took 1.5x the absorbed form's time with 0.77x its FLOPs (docs/performance.md §9.4).
constexpr double kLatentGemmSlowdown = 2.0;

// The cost of each form for `pairs` visible pairs over `keys` keys read, in absorbed-kernel FLOPs
// (helix_attention_expanded.hpp): W = Dv runs the attention kernel on rows [k_nope | k_pe | v] (Dn + P + Dv
// per pair and head) and the grouped up-projection on linear_cpu, both at about the absorbed kernel's rate, so
// both count as plain FLOPs (docs/performance.md 9.4, Zen 4, one thread, T = 512 over S = 4096 keys, load ~4:
// the absorbed call at 57 GFLOP/s, the expanded one at 55 in all, its up-projection alone at 61-65 and the
// kernel on one head's rows at ~61); W = R runs float32 GEMMs.
AttentionFormCost form_cost(const HelixAttentionParams& p, double pairs, double keys) {
  const double H = p.H, R = p.R, P = p.D - p.R, Dn = p.Dn, W = p.W;
  const bool projected = p.w_uv != nullptr;  // W = Dv: the absorbed form runs W_UV on [T, H, R] too
  AttentionFormCost cost;
  cost.absorbed = 2 * H * (2 * R + P) * pairs + (projected ? 2 * p.T * H * R * W : 0.);
  const double up_projection = 2 * keys * H * R * (Dn + (projected ? W : 0.));
  cost.expanded = (projected ? 1. : kLatentGemmSlowdown) * 2 * H * (Dn + P + W) * pairs + up_projection;
  return cost;
}

}  // namespace

AttentionFormCost attention_form_cost(const HelixAttentionParams& p) {
  const auto tokens = tokens_by_sequence(p);
  double pairs = 0, keys = 0;
  for (int64_t b = 0; b < p.B; ++b) {
    if (tokens[b].empty()) continue;
    keys += static_cast<double>(p.num_slots[b]);
    pairs += static_cast<double>(visible_pairs(p, b, tokens[b]));
  }
  return form_cost(p, pairs, keys);
}

AttentionForm choose_attention_form(const HelixAttentionParams& p) {
  if (p.q_expanded == nullptr || p.w_uk == nullptr) return AttentionForm::Absorbed;
  const AttentionForm forced = attention_form();
  if (forced != AttentionForm::Auto) return forced;
  // Every key visible to every token bounds the pairs: when even that leaves the absorbed form cheaper (always
  // for decode, one token per sequence: 2R + P < R·Dn), no positions need counting.
  double keys = 0, max_pairs = 0;
  std::vector<int64_t> count(static_cast<size_t>(p.B), 0);
  for (int64_t t = 0; t < p.T; ++t) ++count[p.q_seq[t]];
  for (int64_t b = 0; b < p.B; ++b) {
    keys += count[b] > 0 ? static_cast<double>(p.num_slots[b]) : 0.;
    max_pairs += static_cast<double>(count[b]) * static_cast<double>(p.num_slots[b]);
  }
  const AttentionFormCost bound = form_cost(p, max_pairs, keys);
  if (bound.absorbed <= bound.expanded) return AttentionForm::Absorbed;
  const AttentionFormCost cost = attention_form_cost(p);
  return cost.expanded < cost.absorbed ? AttentionForm::Expanded : AttentionForm::Absorbed;
}

namespace {

// One sequence's keys on this rank, widened to float32.
struct SequenceKeys {
  int64_t S = 0;
  std::vector<float> c;      // [S, R] latents
  std::vector<float> k_pe;   // [S, P] rope keys
  std::vector<int64_t> pos;  // [S] global positions
};

SequenceKeys gather_keys(const HelixAttentionParams& p, int64_t b) {
  const int64_t S = p.num_slots[b], R = p.R, P = p.D - p.R, D = p.D;
  SequenceKeys k;
  k.S = S;
  k.c.resize(static_cast<size_t>(S * R));
  k.k_pe.resize(static_cast<size_t>(S * P));
  k.pos.resize(static_cast<size_t>(S));
  std::vector<float> row(static_cast<size_t>(D));
  for (int64_t s = 0; s < S; ++s) {
    const int64_t r = pool_row(p, b, s);
    k.pos[s] = p.kv_pos[r];
    if (p.kv_dtype == DType::Float32) {
      std::memcpy(row.data(), static_cast<const float*>(p.pool) + r * D, static_cast<size_t>(D) * 4);
    } else {
      const auto* src = static_cast<const bf16_t*>(p.pool) + r * D;
      for (int64_t d = 0; d < D; ++d) row[d] = bf16_to_float(src[d]);
    }
    std::memcpy(k.c.data() + s * R, row.data(), static_cast<size_t>(R) * 4);
    std::memcpy(k.k_pe.data() + s * P, row.data() + R, static_cast<size_t>(P) * 4);
  }
  return k;
}

// dst [cols, rows] = src [rows, cols]^T, elements of `bytes` (2 or 4) bytes.
void transpose(const void* src, int64_t rows, int64_t cols, size_t bytes, void* dst) {
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) std::memcpy(d + (c * rows + r) * bytes, s + (r * cols + c) * bytes, bytes);
  }
}

void linear(const float* x, int64_t T, int64_t ldx, const void* w, DType w_dtype, int64_t N, int64_t K, float* y,
            int64_t ldy) {
  linear_cpu(LinearParams{x, w, y, T, N, K, ldx, ldy, w_dtype, false, DType::Float32, DType::Float32});
}

// The exp pass of softmax_row on 16 keys a step: s[k] = exp2(s[k] * c - m) where key_pos[k] <= q_pos, else 0;
// returns the sum.
#if defined(__x86_64__) && defined(__GNUC__)
HELIX_AVX512F float masked_exp2_avx512(float* s, const int64_t* key_pos, int64_t S, int64_t q_pos, float c, float m) {
  const __m512 vc = _mm512_set1_ps(c), vm = _mm512_set1_ps(m);
  const __m512i vq = _mm512_set1_epi64(q_pos);
  __m512 sum = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= S; k += 16) {
    const __mmask8 lo = _mm512_cmple_epi64_mask(_mm512_loadu_si512(key_pos + k), vq);
    const __mmask8 hi = _mm512_cmple_epi64_mask(_mm512_loadu_si512(key_pos + k + 8), vq);
    const __m512 x = _mm512_fmsub_ps(_mm512_loadu_ps(s + k), vc, vm);
    const __m512 e = _mm512_maskz_mov_ps(static_cast<__mmask16>(lo | (hi << 8)), detail::exp2_flush_avx512(x));
    _mm512_storeu_ps(s + k, e);
    sum = _mm512_add_ps(sum, e);
  }
  float total = _mm512_reduce_add_ps(sum);
  for (; k < S; ++k) {
    s[k] = key_pos[k] <= q_pos ? detail::exp2_flush(s[k] * c - m) : 0.f;
    total += s[k];
  }
  return total;
}
#endif

float masked_exp2(float* s, const int64_t* key_pos, int64_t S, int64_t q_pos, float c, float m) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (detail::avx512_tile_ops() != nullptr) return masked_exp2_avx512(s, key_pos, S, q_pos, c, m);
#endif
  float sum = 0.f;
  for (int64_t k = 0; k < S; ++k) {
    s[k] = key_pos[k] <= q_pos ? detail::exp2_flush(s[k] * c - m) : 0.f;
    sum += s[k];
  }
  return sum;
}

// Row s [S] of scores -> the softmax weights of its visible keys (key_pos <= q_pos; 0 for the others), in
// place; returns the LSE of scale * s (natural log; -inf, all weights 0, when no key is visible).
float softmax_row(float* s, const int64_t* key_pos, int64_t S, int64_t q_pos, float scale) {
  const float c = scale * detail::kLog2e;  // base-2 exponents, as the absorbed kernels
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t k = 0; k < S; ++k) {
    if (key_pos[k] <= q_pos) m = std::max(m, s[k] * c);
  }
  if (m == -std::numeric_limits<float>::infinity()) {
    std::fill(s, s + S, 0.f);
    return m;
  }
  const float sum = masked_exp2(s, key_pos, S, q_pos, c, m);
  const float inv = 1.f / sum;
  for (int64_t k = 0; k < S; ++k) s[k] *= inv;
  return (m + std::log2(sum)) / detail::kLog2e;
}

// The up-projection of a group of heads [h0, h0 + g): ONE linear_cpu call over the latents [S, R] (packed once
// into bf16 hi/lo panels per call, so once per group instead of twice per head) against the group's weight
// rows, per head [W_UK[h]^T (Dn rows) | W_UV[h] (Dv rows, W = Dv only)]: up [S, g, E], E = Dn (+ Dv).
struct HeadGroup {
  int64_t h0 = 0, g = 0, E = 0;
  DType w_dtype = DType::Float32;  // the weights' dtype; float32 when W_UV's and W_UK's differ
  std::vector<unsigned char> w;    // [g, E, R] w_dtype
  std::vector<float> up;           // [S, g, E]
};

// dst [cols, rows] (dst_dtype) = src [rows, cols]^T (src_dtype); float32 or bfloat16, same or bf16 -> f32.
void transpose_to(const void* src, DType src_dtype, int64_t rows, int64_t cols, void* dst, DType dst_dtype) {
  if (src_dtype == dst_dtype) return transpose(src, rows, cols, dtype_size(src_dtype), dst);
  const auto* s = static_cast<const bf16_t*>(src);
  auto* d = static_cast<float*>(dst);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) d[c * rows + r] = bf16_to_float(s[r * cols + c]);
  }
}

void up_project_group(const HelixAttentionParams& p, const SequenceKeys& keys, int64_t h0, int64_t g, HeadGroup& x) {
  const int64_t R = p.R, Dn = p.Dn, Dv = p.w_uv != nullptr ? p.W : 0, E = Dn + Dv;
  x.h0 = h0, x.g = g, x.E = E;
  x.w_dtype = Dv == 0 || p.w_uv_dtype == p.w_uk_dtype ? p.w_uk_dtype : DType::Float32;
  const size_t wb = dtype_size(x.w_dtype), uvb = dtype_size(p.w_uv_dtype), ukb = dtype_size(p.w_uk_dtype);
  x.w.resize(static_cast<size_t>(g * E * R) * wb);
  x.up.resize(static_cast<size_t>(keys.S * g * E));
  for (int64_t j = 0; j < g; ++j) {
    unsigned char* dst = x.w.data() + j * E * R * wb;
    // w_uk[h] is [R, Dn] (as the absorb reads it); linear_cpu reads a weight [N, K] = [Dn, R].
    transpose_to(static_cast<const unsigned char*>(p.w_uk) + (h0 + j) * R * Dn * ukb, p.w_uk_dtype, R, Dn, dst,
                 x.w_dtype);
    if (Dv == 0) continue;
    // w_uv[h] is [Dv, R]: already a linear_cpu weight.
    const auto* uv = static_cast<const unsigned char*>(p.w_uv) + (h0 + j) * Dv * R * uvb;
    unsigned char* dst_uv = dst + Dn * R * wb;
    if (p.w_uv_dtype == x.w_dtype) {
      std::memcpy(dst_uv, uv, static_cast<size_t>(Dv * R) * wb);
    } else {  // bf16 W_UV beside a float32 W_UK
      const auto* src = reinterpret_cast<const bf16_t*>(uv);
      auto* d = reinterpret_cast<float*>(dst_uv);
      for (int64_t i = 0; i < Dv * R; ++i) d[i] = bf16_to_float(src[i]);
    }
  }
  linear(keys.c.data(), keys.S, R, x.w.data(), x.w_dtype, g * E, R, x.up.data(), g * E);
}

// Head h (in group x) of one sequence: its Tb query rows q [Tb, ldq] (q_nope | q_pe of head h at column 0)
// -> o [Tb, ldo] (W values of head h at column 0) and lse [Tb, ldl].
struct HeadScratch {
  std::vector<float> rows;        // [S, Dn + P (+ Dv)]: k_nope | k_pe (| v with W = Dv)
  std::vector<bf16_t> rows_bf16;  // the same rows rounded to bf16 (W = Dv under a one-product kernel path)
  std::vector<float> scores;      // W = R: [Tb, S]
  std::vector<float> qh, oh, lh;  // W = Dv: qh [Tb, Dn + P], oh [Tb, Dv], lh [Tb]
};

// The kernel paths that round q and the softmax weights to bf16 (one product per multiply-add: precision
// "bf16", helix/precision.py). Under them the expanded rows are rounded to bf16 too, the accuracy class of
// those kernels, which then read the rows as stored at twice the float32-grade rate.
bool one_product_path() {
  const MlaKernelPath path = mla_kernel_path();
  return path == MlaKernelPath::Amx || path == MlaKernelPath::Avx512Bf16;
}

void copy_row(const float* src, int64_t n, float* dst) { std::memcpy(dst, src, static_cast<size_t>(n) * 4); }
void copy_row(const float* src, int64_t n, bf16_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

// rows [S, Dn + P (+ Dv)] = [k_nope | k_pe (| v)]: head h's expanded keys (and values) from the group's up.
template <typename Row>
void head_rows(const HelixAttentionParams& p, const SequenceKeys& keys, const HeadGroup& x, int64_t h,
               std::vector<Row>& rows) {
  const int64_t P = p.D - p.R, Dn = p.Dn, E = x.E, Dr = E + P, ldu = x.g * E;
  const float* up = x.up.data() + (h - x.h0) * E;
#pragma omp parallel for schedule(static) if (keys.S >= 1024)
  for (int64_t s = 0; s < keys.S; ++s) {
    Row* row = &rows[s * Dr];
    copy_row(up + s * ldu, Dn, row);
    copy_row(&keys.k_pe[s * P], P, row + Dn);
    copy_row(up + s * ldu + Dn, E - Dn, row + Dn + P);
  }
}

// W = Dv: the MLA kernel itself (mla_attention_cpu) on per-head rows [k_nope | k_pe | v]: scores over the
// first Dn + P columns against q_nope | q_pe, values the last Dv: 2·(Dn + P + Dv) FLOPs per pair, at the
// kernel's rate and with its causal tile skipping.
void expanded_head_projected(const HelixAttentionParams& p, const SequenceKeys& keys, const HeadGroup& g, int64_t h,
                             const float* q, int64_t ldq, const int64_t* q_pos, int64_t Tb, float* o, int64_t ldo,
                             float* lse, int64_t ldl, HeadScratch& x) {
  const int64_t P = p.D - p.R, Dn = p.Dn, Dv = p.W, Dq = Dn + P;
  for (int64_t t = 0; t < Tb; ++t) std::memcpy(&x.qh[t * Dq], q + t * ldq, static_cast<size_t>(Dq) * 4);
  const MlaAttentionParams a{x.qh.data(), q_pos, x.oh.data(), x.lh.data(), Tb, 1, Dq, Dv, p.scale, DType::Float32};
  if (!x.rows_bf16.empty()) {
    head_rows(p, keys, g, h, x.rows_bf16);
    mla_attention_cpu(a, x.rows_bf16.data(), Dq + Dv, Dq, keys.pos.data(), keys.S, DType::BFloat16);
  } else {
    head_rows(p, keys, g, h, x.rows);
    mla_attention_cpu(a, x.rows.data(), Dq + Dv, Dq, keys.pos.data(), keys.S, DType::Float32);
  }
  for (int64_t t = 0; t < Tb; ++t) {
    std::memcpy(o + t * ldo, &x.oh[t * Dv], static_cast<size_t>(Dv) * 4);
    lse[t * ldl] = x.lh[t];
  }
}

// W = R: scores [Tb, S] = q_nope | q_pe against k_nope | k_pe (linear_cpu), the softmax here, and the latent
// rows summed with its weights (linear_cpu against c_t [R, S], the latents transposed).
void expanded_head_latent(const HelixAttentionParams& p, const SequenceKeys& keys, const float* c_t, const HeadGroup& g,
                          int64_t h, const float* q, int64_t ldq, const int64_t* q_pos, int64_t Tb, float* o,
                          int64_t ldo, float* lse, int64_t ldl, HeadScratch& x) {
  const int64_t S = keys.S, R = p.R, Dq = p.Dn + p.D - p.R;
  head_rows(p, keys, g, h, x.rows);
  linear(q, Tb, ldq, x.rows.data(), DType::Float32, S, Dq, x.scores.data(), S);
#pragma omp parallel for schedule(static) if (Tb * S >= (1 << 15))
  for (int64_t t = 0; t < Tb; ++t) lse[t * ldl] = softmax_row(&x.scores[t * S], keys.pos.data(), S, q_pos[t], p.scale);
  linear(x.scores.data(), Tb, S, c_t, DType::Float32, R, S, o, ldo);
}

// The scratch of the per-head calls (W = Dv: rows in bf16 under a one-product kernel path).
HeadScratch head_scratch(const HelixAttentionParams& p, int64_t S, int64_t Tb) {
  const int64_t Dq = p.Dn + p.D - p.R, W = p.W;
  HeadScratch x;
  const size_t row_elems = static_cast<size_t>(S * ((p.w_uv != nullptr ? W : 0) + Dq));
  if (p.w_uv != nullptr && one_product_path()) {
    x.rows_bf16.resize(row_elems);
  } else {
    x.rows.resize(row_elems);
  }
  if (p.w_uv != nullptr) {
    x.qh.resize(static_cast<size_t>(Tb * Dq));
    x.oh.resize(static_cast<size_t>(Tb * W));
    x.lh.resize(static_cast<size_t>(Tb));
  } else {
    x.scores.resize(static_cast<size_t>(Tb * S));
  }
  return x;
}

}  // namespace

int64_t expanded_head_group(const HelixAttentionParams& p, int64_t S) {
  const int64_t forced = g_head_group.load();
  if (forced > 0) return std::min(forced, p.H);
  const int64_t E = (p.w_uv != nullptr ? p.W : 0) + p.Dn;
  return std::clamp<int64_t>(kHeadGroupBytes / std::max<int64_t>(1, S * E * 4), 1, p.H);
}

void expanded_attention_cpu(const HelixAttentionParams& p, float* o, float* lse) {
  const int64_t H = p.H, R = p.R, Dn = p.Dn, Dq = Dn + p.D - p.R, W = p.W;
  const auto tokens = tokens_by_sequence(p);
  for (int64_t b = 0; b < p.B; ++b) {
    const std::vector<int64_t>& tb = tokens[b];
    const int64_t Tb = static_cast<int64_t>(tb.size());
    if (Tb == 0) continue;
    const SequenceKeys keys = gather_keys(p, b);
    const int64_t S = keys.S;
    // q [Tb, H, Dq], ob [Tb, H, W], lb [Tb, H]: in place when the tokens are consecutive (a prompt chunk).
    const bool consecutive = tb.back() - tb.front() + 1 == Tb;
    std::vector<float> q_rows, o_rows, lse_rows;
    const float* q = p.q_expanded + tb[0] * H * Dq;
    float *ob = o + tb[0] * H * W, *lb = lse + tb[0] * H;
    if (!consecutive) {
      q_rows.resize(static_cast<size_t>(Tb * H * Dq));
      for (int64_t i = 0; i < Tb; ++i) {
        std::memcpy(&q_rows[i * H * Dq], p.q_expanded + tb[i] * H * Dq, static_cast<size_t>(H * Dq) * 4);
      }
      o_rows.resize(static_cast<size_t>(Tb * H * W));
      lse_rows.resize(static_cast<size_t>(Tb * H));
      q = q_rows.data(), ob = o_rows.data(), lb = lse_rows.data();
    }
    if (S == 0) {  // no key of this sequence on this rank
      std::fill(ob, ob + Tb * H * W, 0.f);
      std::fill(lb, lb + Tb * H, -std::numeric_limits<float>::infinity());
    } else {
      std::vector<int64_t> pos(static_cast<size_t>(Tb));
      for (int64_t i = 0; i < Tb; ++i) pos[i] = p.q_pos[tb[i]];
      std::vector<float> c_t;  // [R, S]: the values of the latent form (W = R)
      if (p.w_uv == nullptr) {
        c_t.resize(static_cast<size_t>(R * S));
        transpose(keys.c.data(), S, R, 4, c_t.data());
      }
      HeadScratch x = head_scratch(p, S, Tb);
      HeadGroup group;
      const int64_t g = expanded_head_group(p, S);
      for (int64_t h = 0; h < H; ++h) {
        if (h % g == 0) up_project_group(p, keys, h, std::min(g, H - h), group);
        const float* qh = q + h * Dq;
        float *oh = ob + h * W, *lh = lb + h;
        if (p.w_uv != nullptr) {
          expanded_head_projected(p, keys, group, h, qh, H * Dq, pos.data(), Tb, oh, H * W, lh, H, x);
        } else {
          expanded_head_latent(p, keys, c_t.data(), group, h, qh, H * Dq, pos.data(), Tb, oh, H * W, lh, H, x);
        }
      }
    }
    if (!consecutive) {
      for (int64_t i = 0; i < Tb; ++i) {
        std::memcpy(o + tb[i] * H * W, &o_rows[i * H * W], static_cast<size_t>(H * W) * 4);
        std::memcpy(lse + tb[i] * H, &lse_rows[i * H], static_cast<size_t>(H) * 4);
      }
    }
  }
}

}  // namespace helix
