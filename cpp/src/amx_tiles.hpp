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

}  // namespace helix::detail::amx
