// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_* helpers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "helix/ops/linear.hpp"

#include <immintrin.h>

#include <algorithm>
#include <atomic>

#include "amx_tiles.hpp"
#include "linear_bf16.hpp"
#include "mla_attention_tiles.hpp"

namespace helix {

namespace {

inline float to_f32(float v) { return v; }
inline float to_f32(bf16_t v) { return bf16_to_float(v); }

// ---- AVX-512F: 16 lanes, tiles of 4 tokens x 4 rows (16 accumulators of 32 registers) -----------------
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace avx512 {
struct V {
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  // bf16 -> f32 is exact: the 16 bits become the high half of the float.
  static Reg load(const bf16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(Reg a) { return _mm512_reduce_add_ps(a); }
};
constexpr int64_t kTileT = 4;
constexpr int64_t kTileN = 4;
#include "linear_tiles.inc"
}  // namespace avx512
#pragma GCC pop_options

// ---- AVX2 + FMA: 8 lanes, tiles of 2 tokens x 4 rows (8 accumulators of 16 registers) -----------------
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct V {
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(const bf16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(Reg a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};
constexpr int64_t kTileT = 2;
constexpr int64_t kTileN = 4;
#include "linear_tiles.inc"
}  // namespace avx2
#pragma GCC pop_options

// ---- Portable C++ (any x86-64 or other CPU): one lane, the compiler's baseline ------------------------
namespace portable {
struct V {
  using Reg = float;
  static constexpr int kLanes = 1;
  static Reg zero() { return 0.f; }
  static Reg load(const float* p) { return *p; }
  static Reg load(const bf16_t* p) { return bf16_to_float(*p); }
  static Reg fma(Reg a, Reg b, Reg c) { return a * b + c; }
  static float sum(Reg a) { return a; }
};
constexpr int64_t kTileT = 4;
constexpr int64_t kTileN = 4;
#include "linear_tiles.inc"
}  // namespace portable

using RowsFn = void (*)(const LinearParams&, int64_t, int64_t, int64_t, int64_t);

struct Isa {
  RowsFn rows;
  const char* name;
};

Isa pick_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {avx512::linear_rows, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {avx2::linear_rows, "avx2"};
  return {portable::linear_rows, "portable"};
}

const Isa& isa() {
  static const Isa chosen = pick_isa();
  return chosen;
}

// Weight rows per OpenMP work item (a multiple of every kTileN).
constexpr int64_t kRowBlock = 16;
// Tokens per block: the block of x (tokens x K floats) should stay in the L2 cache while the weight streams.
constexpr int64_t kTokenBlockBytes = 1 << 20;
// Calls with fewer multiply-adds than this run on one thread (a parallel region costs a few microseconds).
constexpr int64_t kParallelMinWork = 1 << 16;

void run_linear(const LinearParams& p, RowsFn rows) {
  if (p.T <= 0 || p.N <= 0) return;
  // Decode-sized T (up to 16 tokens) always fits one block: the weight is read from memory exactly once.
  const int64_t by_cache = kTokenBlockBytes / (std::max<int64_t>(p.K, 1) * int64_t{sizeof(float)});
  const int64_t token_block = std::max<int64_t>(16, by_cache / 4 * 4);
  const int64_t row_blocks = (p.N + kRowBlock - 1) / kRowBlock;
  for (int64_t t0 = 0; t0 < p.T; t0 += token_block) {
    const int64_t t1 = std::min(p.T, t0 + token_block);
    const bool parallel = (t1 - t0) * p.N * p.K >= kParallelMinWork;
#pragma omp parallel for schedule(dynamic, 2) if (parallel)
    for (int64_t b = 0; b < row_blocks; ++b) {
      rows(p, t0, t1, b * kRowBlock, std::min(p.N, (b + 1) * kRowBlock));
    }
  }
}

// ---- AMX-BF16 (bf16 weights) ---------------------------------------------------------------------------
//
// y^T [n][t] = W [n][K] . x^T [K][t] is exactly the attention's QK tile product (mla_attention_amx.cpp) with
// the weight rows as the keys and the tokens as the query rows, so its tile sets are reused (split: "amx",
// one product: "amx_bf16"):
//   pack_tokens: the tokens of one block -> B operand [Kpad/2][Mp (+16)][2] bf16 pairs, two planes (hi, lo =
//           bf16(x - hi)) or one (x rounded), the layout of the attention's pack_q; packed once per call.
//   qk:     A operand = the weight rows read in place (16 rows a tile, stride K * 2 bytes; no repack when
//           K % 32 == 0 and the 16-row group is complete, else the group is copied zero-padded), two tile
//           products per step (hi, lo; one when x is rounded) into St [rows][Mp] fp32.
// St is then transposed into y (written or added). Work items are (row chunk, token block) pairs.
// Not done: a one-time repack of the weights at load time (rows at a stride padded by a cache line, or
// tiles contiguous) would avoid the L1 set aliasing of K * 2 = 4 KiB-multiple strides; see performance.md.

namespace amx = detail::amx;

// The tokens [M] rows of x (row stride ldx) -> the qpack layout of pack_q (amx_tiles.hpp): plane 0 x rounded
// to bf16 (hi), Parts == 2: plane 1 lo = bf16(x - hi), each [Kpad/2][qpack_ld(Mp)] pairs (k >= K, m >= M
// zero). The same values as amx_tile_ops(Parts == 2)->pack_q (round to nearest even), but 16 tokens x 32 k at
// a time through a 16 x 16 pair transpose: the attention's row-by-row scatter costs ~3 ns per pair,
// negligible there (once per query block) but measured to take more than half of a T = 16, K = 2048, N = 256
// linear call.
template <int Parts>
HELIX_AMX void pack_tokens(const float* x, int64_t ldx, int64_t M, int64_t Mp, int64_t K, void* qpack) {
  const int64_t Kpad = amx::round_up(K, 32), ld = amx::qpack_ld(Mp);
  uint32_t* hi_out = static_cast<uint32_t*>(qpack);
  uint32_t* lo_out = hi_out + amx::qpack_plane_bytes(K, Mp) / 4;
  for (int64_t m0 = 0; m0 < Mp; m0 += 16) {
    for (int64_t k0 = 0; k0 < Kpad; k0 += 32) {
      __m512i hi[16], lo[16];
      amx::round_pairs_16x32<Parts>(x + m0 * ldx, ldx, M - m0, K, k0, hi, lo);  // [j]: pair k0/2 + j
      for (int64_t j = 0; j < 16; ++j) {
        _mm512_storeu_si512(hi_out + (k0 / 2 + j) * ld + m0, hi[j]);
        if constexpr (Parts == 2) _mm512_storeu_si512(lo_out + (k0 / 2 + j) * ld + m0, lo[j]);
      }
    }
  }
}

// Weight rows per work item (<= the attention's AMX key tile, 256): 64 rows x K = 7168 bf16 = 0.9 MiB stay in
// L2 while the token blocks of the chunk pass over them.
constexpr int64_t kAmxRows = 64;
// Packed bytes of one token block (4 bytes per token per k: hi + lo): about 1 MiB, so the block stays in L2
// while a row chunk streams past; tokens per block a multiple of 32 (two B tiles), at least 32, at most 256.
constexpr int64_t kAmxPackBytes = 1 << 20;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

int64_t amx_token_block(int64_t K) {
  return std::clamp<int64_t>(kAmxPackBytes / (4 * std::max<int64_t>(K, 1)) / 32 * 32, 32, 256);
}

using detail::XBf16;

// The tile set for x rounded (one plane) or split (two); nullptr where AMX is not usable.
const detail::TileOps* amx_ops(XBf16 x_parts) { return detail::amx_tile_ops(x_parts == XBf16::Split); }
bool amx_usable() { return amx_ops(XBf16::Split) != nullptr; }

struct AmxWorkspace {
  detail::AlignedBuffer scores, extra;
  std::vector<const void*> rows, next;
};

AmxWorkspace& amx_workspace() {
  thread_local AmxWorkspace ws;
  return ws;
}

// Weight rows [n0, n1) (n1 - n0 <= kAmxRows) against tokens [t0, t0 + M) packed at qpack (Mp = round_up(M,
// 16) columns). Returns false when out of memory (nothing written).
bool amx_item(const LinearParams& p, const detail::TileOps& ops, const void* qpack, int64_t t0, int64_t M, int64_t n0,
              int64_t n1, bool prefetch_next) {
  const int64_t Mp = round_up(M, 16), nt = n1 - n0;
  AmxWorkspace& ws = amx_workspace();
  float* St = ws.scores.get<float>(kAmxRows * Mp);
  const int64_t extra_bytes = ops.extra_bytes(p.K, 0, Mp);
  void* extra = ws.extra.get<unsigned char>(extra_bytes);
  if (!St || !extra) return false;
  const auto* w = static_cast<const unsigned char*>(p.w);
  const int64_t row_bytes = p.K * int64_t{sizeof(bf16_t)};
  ws.rows.resize(static_cast<size_t>(kAmxRows));
  ws.next.resize(static_cast<size_t>(kAmxRows));
  for (int64_t n = 0; n < nt; ++n) ws.rows[n] = w + (n0 + n) * row_bytes;
  // The next chunk's rows, prefetched into L2 during the products (when this is the chunk's last item).
  const int64_t next_count = prefetch_next ? std::clamp<int64_t>(p.N - n1, 0, kAmxRows) : 0;
  for (int64_t n = 0; n < next_count; ++n) ws.next[n] = w + (n1 + n) * row_bytes;
  const detail::TileScratch scratch{nullptr, nullptr, extra, ws.next.data(), next_count, row_bytes};
  ops.qk(qpack, ws.rows.data(), nt, p.K, Mp, St, scratch);
  detail::store_tile_transposed(p, St, Mp, t0, M, n0, nt);
  return true;
}

detail::AlignedBuffer& amx_packs() {
  thread_local detail::AlignedBuffer buf;
  return buf;
}

void run_linear_amx(const LinearParams& p, XBf16 x_parts) {
  if (p.T <= 0 || p.N <= 0) return;
  const detail::TileOps& ops = *amx_ops(x_parts);
  const auto pack = x_parts == XBf16::Split ? pack_tokens<2> : pack_tokens<1>;
  const int64_t tb = amx_token_block(p.K);
  const int64_t nblk = (p.T + tb - 1) / tb;
  const int64_t pack_stride = round_up(ops.qpack_bytes(p.K, round_up(std::min(p.T, tb), 16)), 64);
  auto* packs = amx_packs().get<unsigned char>(nblk * pack_stride);
  if (packs == nullptr) {  // out of memory for the packed tokens: the AVX-512 path needs no workspace
    run_linear(p, avx512::linear_rows);
    return;
  }
  const int64_t chunks = (p.N + kAmxRows - 1) / kAmxRows;
  const int64_t items = chunks * nblk;
  const bool parallel = p.T * p.N * p.K >= kParallelMinWork && items > 1;
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t t0 = b * tb, M = std::min(tb, p.T - t0);
      pack(static_cast<const float*>(p.x) + t0 * p.ldx, p.ldx, M, round_up(M, 16), p.K, packs + b * pack_stride);
    }
    // (the implicit barrier of the loop above: every block is packed before any product)
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t c = item / nblk, b = item % nblk;
      const int64_t n0 = c * kAmxRows, n1 = std::min(p.N, n0 + kAmxRows);
      const int64_t t0 = b * tb, M = std::min(tb, p.T - t0);
      if (!amx_item(p, ops, packs + b * pack_stride, t0, M, n0, n1, b == nblk - 1)) {
        avx512::linear_rows(p, t0, t0 + M, n0, n1);  // out of memory for the tile workspace
      }
    }
  }
}

void run_linear_avx512(const LinearParams& p) { run_linear(p, avx512::linear_rows); }

std::atomic<LinearPrecision> g_precision{LinearPrecision::Float32};

// How x enters the bf16 products of a call with T tokens: rounded only at Bf16 precision from
// kLinearBf16MinTokens on (decode-sized calls stay float32-grade in both precisions).
XBf16 x_parts_for(int64_t T) {
  return g_precision.load(std::memory_order_relaxed) == LinearPrecision::Bf16 && T >= kLinearBf16MinTokens
             ? XBf16::Rounded
             : XBf16::Split;
}

// A named bf16 path of linear_cpu_isa (AMX tiles or AVX512_BF16, x rounded or split); float32 weights have
// no bf16 path and run the AVX-512 one.
void run_bf16_path(const LinearParams& p, bool amx, XBf16 x_parts) {
  if (p.w_dtype != DType::BFloat16) {
    run_linear_avx512(p);
  } else if (amx) {
    run_linear_amx(p, x_parts);
  } else {
    detail::linear_bf16(p, x_parts, run_linear_avx512);
  }
}

}  // namespace

void set_linear_precision(LinearPrecision precision) { g_precision.store(precision, std::memory_order_relaxed); }

LinearPrecision linear_precision() { return g_precision.load(std::memory_order_relaxed); }

const char* linear_isa() { return isa().name; }

std::vector<std::string> linear_isas() {
  __builtin_cpu_init();
  std::vector<std::string> out;
  if (amx_usable()) out.insert(out.end(), {"amx_bf16", "amx"});
  if (detail::linear_bf16_usable()) out.insert(out.end(), {"avx512_bf16", "avx512_bf16_split"});
  if (__builtin_cpu_supports("avx512f")) out.emplace_back("avx512");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.emplace_back("avx2");
  out.emplace_back("portable");
  return out;
}

void linear_cpu(const LinearParams& p) {
  const bool bf16_weights = p.w_dtype == DType::BFloat16;
  if (bf16_weights && p.T >= kLinearAmxMinTokens && amx_usable()) {
    run_linear_amx(p, x_parts_for(p.T));
  } else if (bf16_weights && p.T >= kLinearBf16SplitMinTokens && detail::linear_bf16_usable()) {
    detail::linear_bf16(p, x_parts_for(p.T), run_linear_avx512);
  } else {
    run_linear(p, isa().rows);
  }
}

void linear_cpu_isa(const LinearParams& p, std::string_view name) {
  __builtin_cpu_init();
  if (name == "amx" || name == "amx_bf16") {
    HELIX_CHECK_ARG(amx_usable(),
                    "argument 'isa': this CPU (or OS) has no usable AMX-BF16 (or the tile permission was refused)");
    run_bf16_path(p, /*amx=*/true, name == "amx" ? XBf16::Split : XBf16::Rounded);
  } else if (name == "avx512_bf16_split" || name == "avx512_bf16") {
    HELIX_CHECK_ARG(detail::linear_bf16_usable(), "argument 'isa': this CPU has no AVX-512F + AVX512_BF16");
    run_bf16_path(p, /*amx=*/false, name == "avx512_bf16_split" ? XBf16::Split : XBf16::Rounded);
  } else if (name == "avx512") {
    HELIX_CHECK_ARG(__builtin_cpu_supports("avx512f"), "argument 'isa': this CPU has no AVX-512F");
    run_linear(p, avx512::linear_rows);
  } else if (name == "avx2") {
    HELIX_CHECK_ARG(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"),
                    "argument 'isa': this CPU has no AVX2 + FMA");
    run_linear(p, avx2::linear_rows);
  } else if (name == "portable") {
    run_linear(p, portable::linear_rows);
  } else {
    throw ArgumentError(detail::concat(
        "argument 'isa' must be amx_bf16, amx, avx512_bf16, avx512_bf16_split, avx512, avx2 or portable, got ", name));
  }
}

}  // namespace helix
