// Internal: the AMX tile basics shared by the AMX kernels (mla_attention_amx.cpp, the AMX path of linear.cpp).
// Include only under `#if defined(__x86_64__) && defined(__GNUC__)` after <immintrin.h>; functions that use
// tile intrinsics carry HELIX_AMX (compiled per function, the library still runs on any x86-64 CPU).
//
// GCC 12's tile intrinsics are asm statements that do not tell the compiler which memory they read or
// write, so every switch between ordinary loads/stores and tile loads/stores of the same buffer goes
// through a compiler barrier (tile_barrier()).
#pragma once

#include <immintrin.h>

#include <cstdint>

#define HELIX_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

namespace helix::detail::amx {

inline void tile_barrier() { __asm__ volatile("" ::: "memory"); }

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Palette 1, tiles 0-7 all 16 rows x 64 bytes: 0-3 accumulators, 4-5 A operands, 6-7 B operands.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

constexpr TileConfig make_config() {
  TileConfig c{};
  c.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    c.colsb[i] = 64;
    c.rows[i] = 16;
  }
  return c;
}

inline constexpr TileConfig kTileConfig = make_config();

// The packed B operand of pack_q (amx_tile_ops(split)->pack_q): [planes][Dpad/2][qpack_ld(Mp)] 32-bit pairs
// of bf16, Dpad = round_up(D, 32); the row stride is padded by one cache line (a power-of-two stride would
// put the 16 rows of a tile into a few L1 sets).
inline int64_t qpack_ld(int64_t Mp) { return Mp + 16; }  // 32-bit pairs per pair row
inline int64_t qpack_plane_bytes(int64_t D, int64_t Mp) { return round_up(D, 32) / 2 * qpack_ld(Mp) * 4; }

// In-register transpose of 16 x 16 32-bit elements (plain AVX-512F: also used by the AVX512_BF16 linear path).
__attribute__((target("avx512f"))) inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // t[2i]: (r2i[0], r2i+1[0], r2i[1], r2i+1[1]) per 128-bit lane; t[2i+1]: elements 2, 3.
  for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // r[4i+e]: element e of each 128-bit lane of rows 4i..4i+3, i.e. per lane L: column 4L+e of the 4 rows.
  for (int i = 0; i < 2; ++i) {
    for (int e = 0; e < 4; ++e) {
      t[8 * i + e] = _mm512_shuffle_i32x4(r[8 * i + e], r[8 * i + 4 + e], 0x88);      // lanes 0, 2 | 0, 2
      t[8 * i + 4 + e] = _mm512_shuffle_i32x4(r[8 * i + e], r[8 * i + 4 + e], 0xdd);  // lanes 1, 3 | 1, 3
    }
  }
  // t[8i+e]: columns (e, 8+e) of rows 8i..8i+7; t[8i+4+e]: columns (4+e, 12+e).
  for (int e = 0; e < 8; ++e) {
    r[e] = _mm512_shuffle_i32x4(t[e], t[8 + e], 0x88);
    r[8 + e] = _mm512_shuffle_i32x4(t[e], t[8 + e], 0xdd);
  }
}

// 16 tokens x 32 k of x as transposed bf16 pairs: the tokens are x's rows [0, 16) (row stride ldx; rows >= M
// and k >= K read as 0), k in [k0, k0 + 32). hi[j]: the 16 tokens' pair (x[k0 + 2j], x[k0 + 2j + 1]) rounded to
// bf16 (nearest even); Parts == 2: lo[j] the same for the rounding errors x - hi (x - hi - lo ~ 2^-17 |x|).
// Shared by the packing of the AMX and the AVX512_BF16 linear paths.
template <int Parts>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) inline void round_pairs_16x32(const float* x, int64_t ldx,
                                                                                     int64_t M, int64_t K, int64_t k0,
                                                                                     __m512i hi[16], __m512i lo[16]) {
  const auto mask_at = [K](int64_t k) {
    return k + 16 <= K ? static_cast<__mmask16>(0xffff)
                       : (k >= K ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << (K - k)) - 1u));
  };
  const __mmask16 mask0 = mask_at(k0), mask1 = mask_at(k0 + 16);
  for (int64_t i = 0; i < 16; ++i) {
    const float* row = x + i * ldx + k0;
    const __m512 a = i < M ? _mm512_maskz_loadu_ps(mask0, row) : _mm512_setzero_ps();
    const __m512 b = i < M ? _mm512_maskz_loadu_ps(mask1, row + 16) : _mm512_setzero_ps();
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // word j: (x[k0 + 2j], x[k0 + 2j + 1])
    hi[i] = h;
    if constexpr (Parts == 2) {
      const __m512 ha = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
      const __m512 hb =
          _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
      lo[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, hb), _mm512_sub_ps(a, ha));
    }
  }
  transpose16x16(hi);
  if constexpr (Parts == 2) transpose16x16(lo);
}

}  // namespace helix::detail::amx
