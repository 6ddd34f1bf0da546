// The AVX512_BF16 linear paths (see linear_bf16.hpp), one template on the parts of x (Parts = 1 or 2).
//
// Layout: the tokens are cut into blocks of up to 32 (two 16-lane vectors); each block is packed once per
// call into a panel [Kp][Parts][Mb] of 32-bit bf16 pairs, Kp = ceil(K / 2), Mb = 16 or 32 tokens: for pair
// kp, Mb hi pairs (hi(x[m][2kp]), hi(x[m][2kp+1])), hi = x rounded to bf16 (nearest even), then (Parts = 2)
// Mb lo pairs (x - hi rounded to bf16); k >= K and m >= M are zero. A micro-tile is NR <= 8 weight rows x Mb
// tokens, NR * Mb / 16 float32 accumulators: per pair of k, each weight row contributes one 32-bit broadcast
// of its two bf16 weights (read in place, no repack), each token vector Parts VDPBF16PS (hi[, lo]).
// Accumulators hold y^T [rows][tokens]; they go through a small buffer into y [tokens][rows].
//
// Work items are (token block, 64-row group) pairs, token blocks outer: a block's panel (32 x K x 2 x Parts
// bytes, 256 KiB at K = 2048 split) stays in L2 while the weight rows stream past, so the weight is read from memory
// once per 32 tokens (a few GB/s at the kernel's rate, far below the copy bandwidth).
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_* helpers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "linear_bf16.hpp"

#if defined(__x86_64__) && defined(__GNUC__)

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "amx_tiles.hpp"
#include "mla_attention_tiles.hpp"

#define HELIX_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

namespace helix::detail {

namespace {

constexpr int64_t kBlockTokens = 32;           // tokens per packed panel (two vectors)
constexpr int kTileRows = 8;                   // weight rows per micro-tile
constexpr int64_t kGroupRows = 64;             // weight rows per work item (a multiple of kTileRows)
constexpr int64_t kParallelMinWork = 1 << 16;  // multiply-adds below which one thread runs the call

int64_t pairs(int64_t K) { return (K + 1) / 2; }
int64_t panel_u32(int64_t K, int64_t Mb, int parts) { return pairs(K) * parts * Mb; }

// Tokens [0, M) of x (row stride ldx), M <= Mb, into the panel [Kp][Parts][Mb] described above.
template <int Parts>
HELIX_BF16 void pack_block(const float* x, int64_t ldx, int64_t M, int64_t Mb, int64_t K, uint32_t* panel) {
  const int64_t Kp = pairs(K);
  for (int64_t m0 = 0; m0 < Mb; m0 += 16) {
    for (int64_t k0 = 0; k0 < 2 * Kp; k0 += 32) {
      __m512i hi[16], lo[16];
      amx::round_pairs_16x32<Parts>(x + m0 * ldx, ldx, M - m0, K, k0, hi, lo);  // [j]: pair k0/2 + j
      const int64_t jn = std::min<int64_t>(16, Kp - k0 / 2);
      for (int64_t j = 0; j < jn; ++j) {
        uint32_t* dst = panel + (k0 / 2 + j) * Parts * Mb + m0;
        _mm512_storeu_si512(dst, hi[j]);
        if constexpr (Parts == 2) _mm512_storeu_si512(dst + Mb, lo[j]);
      }
    }
  }
}

// The two bf16 weights (w[k], w[k + 1]) as one 32-bit pair, broadcast to every lane.
HELIX_BF16 inline __m512bh weight_pair(const bf16_t* w) {
  uint32_t v;
  std::memcpy(&v, w, 4);
  return (__m512bh)_mm512_set1_epi32(static_cast<int>(v));
}

// acc[r][v] += the products of one pair of k: xh (and, Parts == 2, xl) the hi (lo) token pairs, wp[r] the
// weight pairs.
template <int NR, int TV, int Parts>
HELIX_BF16 inline void pair_step(__m512 (&acc)[NR][TV], const uint32_t* xp, int64_t Mb, const __m512bh* wp) {
  __m512bh xh[TV], xl[TV];
#pragma GCC unroll 2
  for (int v = 0; v < TV; ++v) {
    xh[v] = (__m512bh)_mm512_loadu_si512(xp + v * 16);
    if constexpr (Parts == 2) xl[v] = (__m512bh)_mm512_loadu_si512(xp + Mb + v * 16);
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
#pragma GCC unroll 2
    for (int v = 0; v < TV; ++v) {
      acc[r][v] = _mm512_dpbf16_ps(acc[r][v], xh[v], wp[r]);
      if constexpr (Parts == 2) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], xl[v], wp[r]);
    }
  }
}

// st[r][m] = sum_k w[r][k] x[m][k] for NR rows (row stride K) and TV * 16 tokens of a packed panel.
template <int NR, int TV, int Parts>
HELIX_BF16 void micro_tile(const uint32_t* panel, int64_t Mb, const bf16_t* w, int64_t K, float* st) {
  __m512 acc[NR][TV];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < TV; ++v) acc[r][v] = _mm512_setzero_ps();
  __m512bh wp[NR];
  int64_t kp = 0;
  for (; 2 * kp + 1 < K; ++kp) {
    if (kp % 32 == 0) {  // the next tile's rows, one 64-byte line per row per 32 pairs, into L2
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) __builtin_prefetch(w + (NR + r) * K + 2 * kp, 0, 2);
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wp[r] = weight_pair(w + r * K + 2 * kp);
    pair_step<NR, TV, Parts>(acc, panel + kp * Parts * Mb, Mb, wp);
  }
  if (K % 2 != 0) {  // the last weight of each row pairs with 0 (its x partner is 0 in the panel too)
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      wp[r] = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[r * K + K - 1]));
    }
    pair_step<NR, TV, Parts>(acc, panel + kp * Parts * Mb, Mb, wp);
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < TV; ++v) _mm512_storeu_ps(st + r * kBlockTokens + v * 16, acc[r][v]);
}

using TileFn = void (*)(const uint32_t*, int64_t, const bf16_t*, int64_t, float*);

template <int TV, int Parts, size_t... R>
constexpr auto tiles_for(std::index_sequence<R...>) {
  return std::array<TileFn, sizeof...(R)>{&micro_tile<static_cast<int>(R) + 1, TV, Parts>...};
}

using TileTable = std::array<std::array<TileFn, kTileRows>, 2>;  // [TV - 1][NR - 1]

template <int Parts>
constexpr TileTable tile_table() {
  return {tiles_for<1, Parts>(std::make_index_sequence<kTileRows>{}),
          tiles_for<2, Parts>(std::make_index_sequence<kTileRows>{})};
}

// kTiles[Parts - 1]: the micro-tiles for x rounded (1 part) or split (2 parts).
const std::array<TileTable, 2> kTiles = {tile_table<1>(), tile_table<2>()};

// Rows [n0, n1) of W against the M tokens starting at t0, packed in `panel` (Mb columns).
void run_item(const LinearParams& p, const TileTable& tiles, const uint32_t* panel, int64_t t0, int64_t M, int64_t Mb,
              int64_t n0, int64_t n1) {
  const auto* w = static_cast<const bf16_t*>(p.w);
  alignas(64) float st[kTileRows * kBlockTokens];  // [rows][tokens]
  for (int64_t n = n0; n < n1; n += kTileRows) {
    const int64_t nr = std::min<int64_t>(kTileRows, n1 - n);
    tiles[Mb / 16 - 1][nr - 1](panel, Mb, w + n * p.K, p.K, st);
    store_tile_transposed(p, st, kBlockTokens, t0, M, n, nr);
  }
}

AlignedBuffer& panels() {
  thread_local AlignedBuffer buf;
  return buf;
}

}  // namespace

bool linear_bf16_usable() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  }();
  return has;
}

void linear_bf16(const LinearParams& p, XBf16 x_parts, void (*fallback)(const LinearParams&)) {
  if (p.T <= 0 || p.N <= 0) return;
  const int parts = static_cast<int>(x_parts);
  const auto pack = parts == 2 ? pack_block<2> : pack_block<1>;
  const TileTable& tiles = kTiles[parts - 1];
  const int64_t blocks = (p.T + kBlockTokens - 1) / kBlockTokens;
  const int64_t stride = panel_u32(p.K, kBlockTokens, parts);
  uint32_t* packed = p.K > 0 ? panels().get<uint32_t>(blocks * stride) : nullptr;
  if (packed == nullptr) {  // K == 0 or out of memory: the fallback needs no workspace
    fallback(p);
    return;
  }
  const auto block_tokens = [&](int64_t b) { return std::min(kBlockTokens, p.T - b * kBlockTokens); };
  const auto block_width = [&](int64_t b) { return block_tokens(b) > 16 ? kBlockTokens : int64_t{16}; };
  const int64_t groups = (p.N + kGroupRows - 1) / kGroupRows;
  const bool parallel = p.T * p.N * p.K >= kParallelMinWork && blocks * groups > 1;
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      pack(static_cast<const float*>(p.x) + b * kBlockTokens * p.ldx, p.ldx, block_tokens(b), block_width(b), p.K,
           packed + b * stride);
    }
    // (the implicit barrier of the loop above: every block is packed before any product)
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < blocks * groups; ++item) {
      const int64_t b = item / groups, g = item % groups;
      run_item(p, tiles, packed + b * stride, b * kBlockTokens, block_tokens(b), block_width(b), g * kGroupRows,
               std::min(p.N, (g + 1) * kGroupRows));
    }
  }
}

}  // namespace helix::detail

#else  // not x86-64 GCC/Clang

namespace helix::detail {
bool linear_bf16_usable() { return false; }
void linear_bf16(const LinearParams& p, XBf16, void (*fallback)(const LinearParams&)) { fallback(p); }
}  // namespace helix::detail

#endif
