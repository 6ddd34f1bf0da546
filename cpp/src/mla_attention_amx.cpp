// AMX-BF16 tile operations of the MLA attention kernel for bfloat16 keys, compiled per function for
// AMX + AVX-512 and chosen at run time (the library itself still runs on any x86-64 CPU).
//
// AMX multiplies C [16 x 16] fp32 += A [16 x 32] bf16 . B [32 x 16] bf16, where A is row-major and B is
// stored "K-pairs interleaved": row k of the B tile holds the pairs (B[2k][j], B[2k+1][j]) for j < 16.
//
//   QK: St [n][m] = keys [n][d] . q^T [d][m]
//       A = the key rows themselves, read straight from the cache (16 keys a tile, stride = row stride);
//       B = q packed once per row block as [Dpad/2][Mp (+16 padding)][2] bf16, which is already the pair
//       layout (Dpad = D rounded up to 32). So the keys need no re-layout: only groups that are not 16
//       equally spaced rows (a paged cache with blocks of fewer than 16 tokens, the tail of a tile) or
//       D % 32 != 0 are copied into a zero-padded scratch. The next tile's keys are prefetched into L2.
//   PV: O [m][r] += P^T [m][n] . V [n][r]
//       A = P^T in bf16: the softmax weights St [n][m] transposed (16x16 32-bit transposes of bf16 pairs);
//       B = V pairs [ntp/2][Rp][2]: two consecutive key rows interleaved, the one re-layout of the keys
//       (R = 512 columns of each key, once per tile).
//       The output accumulator is row-major O [Mp][o_row_stride(R)] (OLayout::RowMajor) and goes through
//       the C tiles once per key tile (load, key_tile/32 products, store).
// The online softmax between the two products is the AVX-512 one, in fp32, unchanged.
//
// Tile state is per thread: every qk/pv call loads the tile configuration and releases the tiles at the
// end, so nothing is left configured between calls. Linux hands out the AMX tile-data state only after
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) (once per process, for all its threads); if the
// kernel refuses, amx_tile_ops() is nullptr and the driver stays on AVX-512.
//
// The tile configuration, tile_barrier() and the qpack layout are in amx_tiles.hpp (shared with linear.cpp).
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* helpers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "mla_attention_tiles.hpp"

#if defined(__x86_64__) && defined(__GNUC__)

#include "amx_tiles.hpp"

namespace helix::detail {
namespace {

// Keys per online-softmax step: 8 AMX products per round trip of the output accumulators through L2
// (measured on Emerald Rapids, DeepSeek shape: 256 keys ~10% faster than 128, ~15% faster than 64).
constexpr int64_t kAmxKeyTile = 256;
// Line prefetches of the next tile's keys per k-step of the tile products (4: the whole next tile is
// requested during the first ~2/3 of the current one).
constexpr int kPrefetchPerStep = 4;

using amx::kTileConfig;
using amx::qpack_ld;
using amx::qpack_plane_bytes;
using amx::round_up;
using amx::tile_barrier;
using amx::transpose16x16;

// ---- scratch (TileScratch::extra) ---------------------------------------------------------------------

// [pt | ctmp | kcopy or vp]: kcopy lives only inside qk and vp only inside pv, so they share one region
// (qk does not know R, pv does not know D).
struct AmxScratch {
  bf16_t* pt;    // [2][Mp][pt_ld(ntp)]: P^T in bf16 (split: hi, lo planes), ntp = round_up(nt, 32)
  float* ctmp;   // [32][16]: the accumulators of the last R % 16 columns
  void* shared;  // qk: kcopy [kAmxKeyTile][Dpad] bf16, the key groups that cannot be loaded in place;
                 // pv: vp [kAmxKeyTile/2][vp_ld(R)] value pairs
};

// Row strides of the packed operands are padded by one cache line: power-of-two strides (Mp*4, R*4 bytes)
// would put the 16 rows of a tile into a few L1 sets.
inline int64_t pt_ld(int64_t ntp) { return ntp + 32; }            // bf16 per row of P^T
inline int64_t vp_ld(int64_t R) { return round_up(R, 16) + 16; }  // 32-bit pairs per pair row of vp

// One P^T plane; the split kernels keep two (hi, lo).
int64_t pt_plane_bytes(int64_t Mp) { return round_up(Mp * pt_ld(kAmxKeyTile) * 2, 64); }
int64_t pt_bytes(int64_t Mp) { return 2 * pt_plane_bytes(Mp); }
constexpr int64_t kCtmpBytes = 32 * 16 * 4;

int64_t extra_bytes_amx(int64_t D, int64_t R, int64_t Mp) {
  const int64_t kcopy = kAmxKeyTile * round_up(D, 32) * 2;
  const int64_t vp = kAmxKeyTile / 2 * vp_ld(R) * 4;
  return pt_bytes(Mp) + kCtmpBytes + std::max(kcopy, vp);
}

AmxScratch split_scratch(const TileScratch& s, int64_t Mp) {
  unsigned char* base = static_cast<unsigned char*>(s.extra);
  return {reinterpret_cast<bf16_t*>(base), reinterpret_cast<float*>(base + pt_bytes(Mp)),
          base + pt_bytes(Mp) + kCtmpBytes};
}

// ---- q packing: B operand of QK ------------------------------------------------------------------------

// Bytes of one qpack plane (amx::qpack_plane_bytes); the split kernels keep two (hi, lo).

template <bool Split>
int64_t qpack_bytes_amx(int64_t D, int64_t Mp) {
  return (Split ? 2 : 1) * qpack_plane_bytes(D, Mp);
}

// q row m as bf16 into hi[Dpad] (and, Split, the rounding error as bf16 into lo[Dpad]); zero-padded.
// Round to nearest even, as float_to_bf16.
template <bool Split>
HELIX_AMX void round_q_row(const void* row, bool present, int64_t D, int64_t Dpad, DType q_dtype, bf16_t* hi,
                           bf16_t* lo) {
  std::fill(hi, hi + Dpad, bf16_t{0});
  if (Split) std::fill(lo, lo + Dpad, bf16_t{0});
  if (!present) return;
  if (q_dtype == DType::BFloat16) {  // exact: lo stays 0
    std::memcpy(hi, row, static_cast<size_t>(D) * 2);
    return;
  }
  const float* src = static_cast<const float*>(row);
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 mask = d + 16 <= D ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (D - d)) - 1u);
    const __m512 x = _mm512_maskz_loadu_ps(mask, src + d);
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
    _mm256_mask_storeu_epi16(hi + d, mask, h);
    if constexpr (Split) {
      const __m512 xh = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      _mm256_mask_storeu_epi16(lo + d, mask, (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(x, xh)));
    }
  }
}

// qpack [planes][Dpad/2][qpack_ld(Mp)] pairs of bf16 (plane 0: q rounded to bf16; Split: plane 1, the
// rounding error rounded to bf16); d >= D and rows m >= M are zero. Each row is rounded into zero-padded
// lines whose 32-bit pairs are then scattered down column m.
template <bool Split>
HELIX_AMX void pack_q_amx(const void* const* rows, int64_t M, int64_t Mp, int64_t D, DType q_dtype, void* qpack) {
  uint32_t* out = static_cast<uint32_t*>(qpack);
  const int64_t Dpad = round_up(D, 32), ld = qpack_ld(Mp);
  const int64_t plane = qpack_plane_bytes(D, Mp) / 4;
  std::vector<uint32_t> hi(static_cast<size_t>(Dpad / 2)), lo(static_cast<size_t>(Split ? Dpad / 2 : 0));
  for (int64_t m = 0; m < Mp; ++m) {
    round_q_row<Split>(m < M ? rows[m] : nullptr, m < M, D, Dpad, q_dtype, reinterpret_cast<bf16_t*>(hi.data()),
                       reinterpret_cast<bf16_t*>(lo.data()));
    for (int64_t k = 0; k < Dpad / 2; ++k) out[k * ld + m] = hi[k];
    if (Split) {
      for (int64_t k = 0; k < Dpad / 2; ++k) out[plane + k * ld + m] = lo[k];
    }
  }
}

// ---- prefetch of the next tile's keys into L2 ---------------------------------------------------------

// Issues the line prefetches of key rows [row_begin, row_end) of the next tile a few at a time, spread
// over the tile products, so that the in-place A loads of the next QK find the keys in L2 (the products are
// latency-bound on keys streaming from L3/DRAM otherwise).
class Prefetcher {
 public:
  Prefetcher(const TileScratch& s, int64_t row_begin, int64_t row_end)
      : rows_(s.next_rows), lines_((s.next_row_bytes + 63) / 64), row_(row_begin), row_end_(row_end) {
    if (s.next_count == 0 || rows_ == nullptr) row_ = row_end_ = 0;
    row_end_ = std::min(row_end_, s.next_count);
  }
  void step(int n) {
    for (; n > 0 && row_ < row_end_; --n) {
      _mm_prefetch(static_cast<const char*>(rows_[row_]) + line_ * 64, _MM_HINT_T1);
      if (++line_ == lines_) {
        line_ = 0;
        ++row_;
      }
    }
  }

 private:
  const void* const* rows_;
  int64_t lines_, line_ = 0, row_, row_end_;
};

// ---- tile blocks: up to 2 x 2 accumulators -------------------------------------------------------------

// C (i, j) [16 keys][16 rows] = sum_k A_i[k] . B_j[k]; A_i: 16 key rows at a[i] (row stride lda[i] bytes),
// 32 bf16 per step; B_j: 16 pair rows of qpack (stride ldb bytes) at column block j.
// Split: C also accumulates A_i[k] . B_j'[k], B' = the lo plane of qpack at b + b_lo.
template <int NN, int NM, bool Split>
HELIX_AMX void qk_block(const unsigned char* const* a, const int64_t* lda, const unsigned char* b, int64_t ldb,
                        int64_t b_lo, int64_t ksteps, unsigned char* c, int64_t ldc, Prefetcher& pf) {
  _tile_zero(0);
  if constexpr (NM > 1) _tile_zero(1);
  if constexpr (NN > 1) _tile_zero(2);
  if constexpr (NN > 1 && NM > 1) _tile_zero(3);
  for (int64_t k = 0; k < ksteps; ++k) {
    pf.step(kPrefetchPerStep);
    _tile_loadd(4, a[0] + k * 64, lda[0]);
    if constexpr (NN > 1) _tile_loadd(5, a[1] + k * 64, lda[1]);
    _tile_loadd(6, b + k * 16 * ldb, ldb);
    if constexpr (NM > 1) _tile_loadd(7, b + k * 16 * ldb + 64, ldb);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NM > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (NN > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (NN > 1 && NM > 1) _tile_dpbf16ps(3, 5, 7);
    if constexpr (Split) {
      _tile_loadd(6, b + b_lo + k * 16 * ldb, ldb);
      if constexpr (NM > 1) _tile_loadd(7, b + b_lo + k * 16 * ldb + 64, ldb);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (NM > 1) _tile_dpbf16ps(1, 4, 7);
      if constexpr (NN > 1) _tile_dpbf16ps(2, 5, 6);
      if constexpr (NN > 1 && NM > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, ldc);
  if constexpr (NM > 1) _tile_stored(1, c + 64, ldc);
  if constexpr (NN > 1) _tile_stored(2, c + 16 * ldc, ldc);
  if constexpr (NN > 1 && NM > 1) _tile_stored(3, c + 16 * ldc + 64, ldc);
}

// C (i, j) [16 rows][16 columns r] += sum_k A_i[k] . B_j[k]; A_i: 16 rows of P^T (stride lda), 32 keys per
// step; B_j: 16 pair rows of the value pairs (stride ldb) at column block j.
// Split: C also accumulates A_i'[k] . B_j[k], A' = the lo plane of P^T at a + a_lo.
template <int NM, int NR, bool Split>
HELIX_AMX void pv_block(const unsigned char* a, int64_t lda, int64_t a_lo, const unsigned char* b, int64_t ldb,
                        int64_t ksteps, unsigned char* c, int64_t ldc, Prefetcher& pf) {
  _tile_loadd(0, c, ldc);
  if constexpr (NR > 1) _tile_loadd(1, c + 64, ldc);
  if constexpr (NM > 1) _tile_loadd(2, c + 16 * ldc, ldc);
  if constexpr (NM > 1 && NR > 1) _tile_loadd(3, c + 16 * ldc + 64, ldc);
  for (int64_t k = 0; k < ksteps; ++k) {
    pf.step(kPrefetchPerStep);
    _tile_loadd(4, a + k * 64, lda);
    if constexpr (NM > 1) _tile_loadd(5, a + 16 * lda + k * 64, lda);
    _tile_loadd(6, b + k * 16 * ldb, ldb);
    if constexpr (NR > 1) _tile_loadd(7, b + k * 16 * ldb + 64, ldb);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NR > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (NM > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (NM > 1 && NR > 1) _tile_dpbf16ps(3, 5, 7);
    if constexpr (Split) {
      _tile_loadd(4, a + a_lo + k * 64, lda);
      if constexpr (NM > 1) _tile_loadd(5, a + a_lo + 16 * lda + k * 64, lda);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (NR > 1) _tile_dpbf16ps(1, 4, 7);
      if constexpr (NM > 1) _tile_dpbf16ps(2, 5, 6);
      if constexpr (NM > 1 && NR > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, c, ldc);
  if constexpr (NR > 1) _tile_stored(1, c + 64, ldc);
  if constexpr (NM > 1) _tile_stored(2, c + 16 * ldc, ldc);
  if constexpr (NM > 1 && NR > 1) _tile_stored(3, c + 16 * ldc + 64, ldc);
}

// ---- QK --------------------------------------------------------------------------------------------------

template <bool Split>
HELIX_AMX void qk_amx(const void* qpack, const void* const* keys, int64_t nt, int64_t D, int64_t Mp, float* St,
                      const TileScratch& scratch) {
  const int64_t Dpad = round_up(D, 32);
  const int64_t ngroups = (nt + 15) / 16;
  bf16_t* kcopy = static_cast<bf16_t*>(split_scratch(scratch, Mp).shared);
  // A operand of each 16-key group: first row and row stride in bytes.
  const unsigned char* a_base[kAmxKeyTile / 16];
  int64_t a_stride[kAmxKeyTile / 16];
  for (int64_t g = 0; g < ngroups; ++g) {
    const int64_t n0 = 16 * g;
    const int64_t rows = std::min<int64_t>(16, nt - n0);
    const unsigned char* first = static_cast<const unsigned char*>(keys[n0]);
    bool in_place = rows == 16 && D % 32 == 0;
    const int64_t stride = in_place ? static_cast<const unsigned char*>(keys[n0 + 1]) - first : 0;
    in_place = in_place && stride > 0;
    for (int64_t i = 2; in_place && i < 16; ++i) {
      in_place = static_cast<const unsigned char*>(keys[n0 + i]) == first + i * stride;
    }
    if (in_place) {
      a_base[g] = first;
      a_stride[g] = stride;
      continue;
    }
    bf16_t* dst = kcopy + n0 * Dpad;
    for (int64_t i = 0; i < 16; ++i) {
      bf16_t* row = dst + i * Dpad;
      const int64_t filled = i < rows ? D : 0;
      if (filled > 0) std::memcpy(row, keys[n0 + i], static_cast<size_t>(D) * 2);
      std::memset(row + filled, 0, static_cast<size_t>(Dpad - filled) * 2);
    }
    a_base[g] = reinterpret_cast<const unsigned char*>(dst);
    a_stride[g] = Dpad * 2;
  }
  tile_barrier();
  _tile_loadconfig(&kTileConfig);
  const unsigned char* qb = static_cast<const unsigned char*>(qpack);
  unsigned char* cb = reinterpret_cast<unsigned char*>(St);
  const int64_t ldq = qpack_ld(Mp) * 4, ldc = Mp * 4, ksteps = Dpad / 32, q_lo = qpack_plane_bytes(D, Mp);
  Prefetcher pf(scratch, 0, (scratch.next_count + 1) / 2);  // pv_amx prefetches the other half
  // Key pairs outer: a pair of key groups (2 x 36 KiB at D = 576) is reused from L1/L2 across the rows.
  for (int64_t g = 0; g < ngroups; g += 2) {
    const bool two_n = g + 1 < ngroups;
    for (int64_t m0 = 0; m0 < Mp; m0 += 32) {
      const bool two_m = m0 + 16 < Mp;
      unsigned char* c = cb + g * 16 * ldc + m0 * 4;
      const unsigned char* b = qb + m0 * 4;
      if (two_n && two_m) {
        qk_block<2, 2, Split>(a_base + g, a_stride + g, b, ldq, q_lo, ksteps, c, ldc, pf);
      } else if (two_n) {
        qk_block<2, 1, Split>(a_base + g, a_stride + g, b, ldq, q_lo, ksteps, c, ldc, pf);
      } else if (two_m) {
        qk_block<1, 2, Split>(a_base + g, a_stride + g, b, ldq, q_lo, ksteps, c, ldc, pf);
      } else {
        qk_block<1, 1, Split>(a_base + g, a_stride + g, b, ldq, q_lo, ksteps, c, ldc, pf);
      }
    }
  }
  _tile_release();
  tile_barrier();
}

// ---- PV --------------------------------------------------------------------------------------------------

// 16-bit interleave of the two 256-bit halves: [x0..x15, y0..y15] -> [x0, y0, x1, y1, ...].
HELIX_AMX inline __m512i interleave_halves(__m512i v) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                       5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, v);
}

// x rounded to bf16 (round to nearest even), as float32.
HELIX_AMX inline __m512 round_bf16(__m512 x) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// P^T [Mp][pt_ld(ntp)] bf16 from P [nt][Mp] fp32: pair k of row m is (P[2k][m], P[2k+1][m]); keys >= nt
// are 0. Split: a second plane at pt + plane holds the rounding errors P - bf16(P), rounded to bf16.
template <bool Split>
HELIX_AMX void pack_pt(const float* P, int64_t nt, int64_t ntp, int64_t Mp, bf16_t* pt, int64_t plane) {
  for (int64_t m0 = 0; m0 < Mp; m0 += 16) {
    for (int64_t n0 = 0; n0 < ntp; n0 += 32) {
      __m512i w[16], e[16];
      for (int64_t k = 0; k < 16; ++k) {
        const int64_t n = n0 + 2 * k;
        const __m512 p0 = n < nt ? _mm512_loadu_ps(P + n * Mp + m0) : _mm512_setzero_ps();
        const __m512 p1 = n + 1 < nt ? _mm512_loadu_ps(P + (n + 1) * Mp + m0) : _mm512_setzero_ps();
        w[k] = interleave_halves((__m512i)_mm512_cvtne2ps_pbh(p1, p0));  // word m: pair k of row m0+m
        if constexpr (Split) {
          const __m512 r0 = _mm512_sub_ps(p0, round_bf16(p0)), r1 = _mm512_sub_ps(p1, round_bf16(p1));
          e[k] = interleave_halves((__m512i)_mm512_cvtne2ps_pbh(r1, r0));
        }
      }
      transpose16x16(w);  // w[m]: the 16 pairs of row m0+m
      for (int64_t m = 0; m < 16; ++m) _mm512_storeu_si512(pt + (m0 + m) * pt_ld(ntp) + n0, w[m]);
      if constexpr (Split) {
        transpose16x16(e);
        for (int64_t m = 0; m < 16; ++m) _mm512_storeu_si512(pt + plane + (m0 + m) * pt_ld(ntp) + n0, e[m]);
      }
    }
  }
}

// vp [ntp/2][vp_ld(R)] pairs: word r of pair row k is (key[2k][r], key[2k+1][r]); keys >= nt and r >= R are 0.
HELIX_AMX void pack_values(const void* const* keys, int64_t nt, int64_t ntp, int64_t R, int64_t Rp, uint32_t* vp) {
  for (int64_t k = 0; k < ntp / 2; ++k) {
    const bf16_t* v0 = 2 * k < nt ? static_cast<const bf16_t*>(keys[2 * k]) : nullptr;
    const bf16_t* v1 = 2 * k + 1 < nt ? static_cast<const bf16_t*>(keys[2 * k + 1]) : nullptr;
    for (int64_t r = 0; r < Rp; r += 16) {
      const __mmask16 mask =
          r + 16 <= R ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (R - r)) - 1u);
      const __m256i x = v0 ? _mm256_maskz_loadu_epi16(mask, v0 + r) : _mm256_setzero_si256();
      const __m256i y = v1 ? _mm256_maskz_loadu_epi16(mask, v1 + r) : _mm256_setzero_si256();
      const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(x), y, 1);
      _mm512_storeu_si512(vp + k * vp_ld(R) + r, interleave_halves(both));
    }
  }
}

template <bool Split>
HELIX_AMX void pv_amx(const float* P, const void* const* keys, int64_t nt, int64_t R, int64_t Mp, float* O,
                      const TileScratch& scratch) {
  const int64_t ntp = round_up(nt, 32), Rp = round_up(R, 16);
  const AmxScratch ws = split_scratch(scratch, Mp);
  uint32_t* vp = static_cast<uint32_t*>(ws.shared);
  const int64_t plane = pt_plane_bytes(Mp);  // bytes
  pack_pt<Split>(P, nt, ntp, Mp, ws.pt, plane / 2);
  pack_values(keys, nt, ntp, R, Rp, vp);
  tile_barrier();
  _tile_loadconfig(&kTileConfig);
  const unsigned char* a = reinterpret_cast<const unsigned char*>(ws.pt);
  const unsigned char* b = reinterpret_cast<const unsigned char*>(vp);
  unsigned char* c = reinterpret_cast<unsigned char*>(O);
  const int64_t lda = pt_ld(ntp) * 2, ldb = vp_ld(R) * 4, ldc = o_row_stride(R) * 4, ksteps = ntp / 32;
  const int64_t Rfull = R / 16 * 16;
  Prefetcher pf(scratch, (scratch.next_count + 1) / 2, scratch.next_count);
  // Row pairs outer: their P^T rows (2 x 8 KiB) stay in L1 while the value pairs stream past.
  for (int64_t m0 = 0; m0 < Mp; m0 += 32) {
    const bool two_m = m0 + 16 < Mp;
    for (int64_t r0 = 0; r0 < Rfull; r0 += 32) {
      const bool two_r = r0 + 16 < Rfull;
      const unsigned char* am = a + m0 * lda;
      const unsigned char* br = b + r0 * 4;
      unsigned char* cm = c + m0 * ldc + r0 * 4;
      if (two_m && two_r) {
        pv_block<2, 2, Split>(am, lda, plane, br, ldb, ksteps, cm, ldc, pf);
      } else if (two_m) {
        pv_block<2, 1, Split>(am, lda, plane, br, ldb, ksteps, cm, ldc, pf);
      } else if (two_r) {
        pv_block<1, 2, Split>(am, lda, plane, br, ldb, ksteps, cm, ldc, pf);
      } else {
        pv_block<1, 1, Split>(am, lda, plane, br, ldb, ksteps, cm, ldc, pf);
      }
    }
  }
  if (Rfull < R) {  // the last R % 16 columns go through ctmp [32][16]
    const int64_t rt = R - Rfull;
    unsigned char* ct = reinterpret_cast<unsigned char*>(ws.ctmp);
    for (int64_t m0 = 0; m0 < Mp; m0 += 32) {
      const int64_t rows = std::min<int64_t>(32, Mp - m0);
      for (int64_t i = 0; i < rows; ++i) {
        float* dst = ws.ctmp + i * 16;
        std::memcpy(dst, O + (m0 + i) * o_row_stride(R) + Rfull, static_cast<size_t>(rt) * 4);
        std::fill(dst + rt, dst + 16, 0.f);
      }
      tile_barrier();
      if (rows > 16) {
        pv_block<2, 1, Split>(a + m0 * lda, lda, plane, b + Rfull * 4, ldb, ksteps, ct, 64, pf);
      } else {
        pv_block<1, 1, Split>(a + m0 * lda, lda, plane, b + Rfull * 4, ldb, ksteps, ct, 64, pf);
      }
      tile_barrier();
      for (int64_t i = 0; i < rows; ++i) {
        std::memcpy(O + (m0 + i) * o_row_stride(R) + Rfull, ws.ctmp + i * 16, static_cast<size_t>(rt) * 4);
      }
    }
  }
  _tile_release();
  tile_barrier();
}

// AMX-BF16 and AMX-TILE in CPUID, the tile state enabled in XCR0 (bits 17, 18), and the Linux permission;
// empty when all are there, else what is missing.
std::string_view amx_missing() {
  if (avx512_bf16_tile_ops(false) == nullptr) return "no AVX512_BF16 on this CPU (or build), which AMX needs too";
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return "no AMX-BF16 on this CPU";
  uint32_t xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  constexpr uint32_t kTileState = (1u << 17) | (1u << 18);  // XTILECFG, XTILEDATA
  if ((xcr0_lo & kTileState) != kTileState) return "the OS has not enabled the AMX tile state (XCR0)";
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
    return "the OS refused the AMX tile-data permission (arch_prctl ARCH_REQ_XCOMP_PERM)";
  }
  return {};
#else
  return "AMX tile permission is only requested on Linux";
#endif
}

}  // namespace

std::string_view amx_unavailable() {
  // Asked once per process (a function-local static is initialized exactly once, like std::call_once).
  static const std::string_view why = amx_missing();
  return why;
}

const TileOps* amx_tile_ops(bool split) {
  if (!amx_unavailable().empty()) return nullptr;
  static const TileOps amx{DType::BFloat16,        kAmxKeyTile,       OLayout::RowMajor, extra_bytes_amx,
                           qpack_bytes_amx<false>, pack_q_amx<false>, qk_amx<false>,     avx512_tile_ops()->softmax,
                           pv_amx<false>};
  static const TileOps amx_split{DType::BFloat16,       kAmxKeyTile,      OLayout::RowMajor, extra_bytes_amx,
                                 qpack_bytes_amx<true>, pack_q_amx<true>, qk_amx<true>,      avx512_tile_ops()->softmax,
                                 pv_amx<true>};
  return split ? &amx_split : &amx;
}

}  // namespace helix::detail

#else  // not x86-64 GCC/Clang

namespace helix::detail {
std::string_view amx_unavailable() { return "no AMX kernels in this build (not x86-64 GCC/Clang)"; }
const TileOps* amx_tile_ops(bool) { return nullptr; }
}  // namespace helix::detail

#endif
