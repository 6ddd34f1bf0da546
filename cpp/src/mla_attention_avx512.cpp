// AVX-512 tile operations of the MLA attention kernel, compiled per function for AVX-512 (+BF16) and chosen
// at run time, so the library itself still runs on any x86-64 CPU.
//
// Both products are small GEMMs with the query rows m on the vector axis (16 rows per zmm):
//   QK: St[n][m] = sum_d key[n][d] * qpack[d][m]     broadcast key elements, NR=6 keys x NV<=4 vectors
//   PV: OT[r][m] += sum_n key[n][r] * P[n][m]         broadcast value elements, NR=6 r's x NV<=4 vectors
// With bf16 keys the reduction axis goes in pairs (d, d+1) or (n, n+1) through _mm512_dpbf16_ps: q and P
// are packed as bf16 pairs, the values of a tile are re-packed as pairs of consecutive keys.
// VDPBF16PS multiplies bf16 exactly and accumulates in fp32, so the only loss is the rounding of q and P to
// bf16 (2^-9 relative). The split set (Planes = 2) carries q and P as two planes, hi = bf16(x) and
// lo = bf16(x - hi), and runs every product once per plane against the same key (value) pairs: x - hi - lo
// is ~2^-17 |x|, float32-grade at O(1) scores, for twice the products.
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* helpers.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <array>
#include <cstring>
#include <limits>
#include <utility>

#include "exp2_avx512.hpp"
#include "mla_attention_tiles.hpp"

#if defined(__x86_64__) && defined(__GNUC__)

#define HELIX_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

namespace helix::detail {
namespace {

constexpr int kNR = 6;            // broadcast rows per micro-kernel (keys for QK, value columns for PV)
constexpr int kNV = 4;            // zmm vectors of query rows per micro-kernel (64 rows)
constexpr int64_t kDChunk = 128;  // reduction chunk of QK: the [kDChunk][64] q panel stays in L1

inline uint32_t load_u32(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// ---- float32 keys --------------------------------------------------------------------------------------

// c[i][16j..] (+)= sum_{k<klen} a[i][k] * b[k*ldb + 16j..];  a[i] = keys[i] + d0.
template <int NR, int NV>
HELIX_AVX512F void qk_f32_kernel(const float* b, int64_t ldb, const void* const* keys, int64_t d0, int64_t klen,
                                 float* c, int64_t ldc, bool accumulate) {
  __m512 acc[NR][NV];
  const float* a[NR];
  for (int i = 0; i < NR; ++i) {
    a[i] = static_cast<const float*>(keys[i]) + d0;
    for (int j = 0; j < NV; ++j) acc[i][j] = accumulate ? _mm512_loadu_ps(c + i * ldc + 16 * j) : _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < klen; ++k) {
    __m512 bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_ps(b + k * ldb + 16 * j);
    for (int i = 0; i < NR; ++i) {
      const __m512 av = _mm512_set1_ps(a[i][k]);
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + i * ldc + 16 * j, acc[i][j]);
}

// c[i][16j..] += sum_{n<nt} keys[n][r0+i] * P[n*ldb + 16j..]
template <int NR, int NV>
HELIX_AVX512F void pv_f32_kernel(const float* b, int64_t ldb, const void* const* keys, int64_t r0, int64_t nt, float* c,
                                 int64_t ldc) {
  __m512 acc[NR][NV];
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_loadu_ps(c + i * ldc + 16 * j);
  for (int64_t n = 0; n < nt; ++n) {
    __m512 bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_ps(b + n * ldb + 16 * j);
    const float* v = static_cast<const float*>(keys[n]) + r0;
    for (int i = 0; i < NR; ++i) {
      const __m512 av = _mm512_set1_ps(v[i]);
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + i * ldc + 16 * j, acc[i][j]);
}

// ---- bfloat16 keys -------------------------------------------------------------------------------------

inline __m512bh HELIX_AVX512 as_bh(__m512i v) { return (__m512bh)v; }

// acc[i][j] += sum_{p<Planes} dot2(pair[i], b[p*plane + 16j..]): one reduction pair against NV vectors of
// query rows, once per plane.
template <int NR, int NV, int Planes>
HELIX_AVX512 inline void dot2_step(__m512 (&acc)[NR][NV], const uint32_t* b, int64_t plane,
                                   const uint32_t (&pair)[NR]) {
  for (int pl = 0; pl < Planes; ++pl) {
    __m512i bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = _mm512_loadu_si512(b + pl * plane + 16 * j);
    for (int i = 0; i < NR; ++i) {
      const __m512i av = _mm512_set1_epi32(static_cast<int>(pair[i]));
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], as_bh(av), as_bh(bv[j]));
    }
  }
}

// c[i][16j..] (+)= sum_{k<kpairs} dot2(a_i(k), b[k]) over the Planes planes of b, a_i(k) = bf16 pair
// (keys[i][2k], keys[i][2k+1]), b: [Planes][..][ldb] pairs (32-bit words), planes `plane` words apart;
// `odd_tail`: one more lone element keys[i][2*kpairs] (pair high 0).
template <int NR, int NV, int Planes>
HELIX_AVX512 void qk_bf16_kernel(const uint32_t* b, int64_t ldb, int64_t plane, const void* const* keys, int64_t d0,
                                 int64_t kpairs, bool odd_tail, float* c, int64_t ldc, bool accumulate) {
  __m512 acc[NR][NV];
  const bf16_t* a[NR];
  for (int i = 0; i < NR; ++i) {
    a[i] = static_cast<const bf16_t*>(keys[i]) + d0;
    for (int j = 0; j < NV; ++j) acc[i][j] = accumulate ? _mm512_loadu_ps(c + i * ldc + 16 * j) : _mm512_setzero_ps();
  }
  uint32_t pair[NR];
  for (int64_t k = 0; k < kpairs; ++k) {
    for (int i = 0; i < NR; ++i) pair[i] = load_u32(a[i] + 2 * k);
    dot2_step<NR, NV, Planes>(acc, b + k * ldb, plane, pair);
  }
  if (odd_tail) {
    for (int i = 0; i < NR; ++i) pair[i] = a[i][2 * kpairs];
    dot2_step<NR, NV, Planes>(acc, b + kpairs * ldb, plane, pair);
  }
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + i * ldc + 16 * j, acc[i][j]);
}

// c[i][16j..] += sum_{k<npairs} dot2(v[k][r0+i], p[k][16j..]) over the Planes planes of p; v: [npairs][R]
// pairs, p: [Planes][..][ldb] pairs, planes `plane` words apart.
template <int NR, int NV, int Planes>
HELIX_AVX512 void pv_bf16_kernel(const uint32_t* p, int64_t ldb, int64_t plane, const uint32_t* v, int64_t R,
                                 int64_t r0, int64_t npairs, float* c, int64_t ldc) {
  __m512 acc[NR][NV];
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_loadu_ps(c + i * ldc + 16 * j);
  uint32_t pair[NR];
  for (int64_t k = 0; k < npairs; ++k) {
    for (int i = 0; i < NR; ++i) pair[i] = v[k * R + r0 + i];
    dot2_step<NR, NV, Planes>(acc, p + k * ldb, plane, pair);
  }
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(c + i * ldc + 16 * j, acc[i][j]);
}

// ---- dispatch tables over the remainder shapes (NR in 1..6, NV in 1..4) ---------------------------------

template <template <int, int> class K, size_t... I>
constexpr auto make_table(std::index_sequence<I...>) {
  return std::array{K<static_cast<int>(I / kNV) + 1, static_cast<int>(I % kNV) + 1>::fn...};
}
#define HELIX_KERNEL_TABLE(name, ...)        \
  template <int NR, int NV>                  \
  struct name {                              \
    static constexpr auto fn = &__VA_ARGS__; \
  };
HELIX_KERNEL_TABLE(QkF32, qk_f32_kernel<NR, NV>)
HELIX_KERNEL_TABLE(PvF32, pv_f32_kernel<NR, NV>)
HELIX_KERNEL_TABLE(QkBf16, qk_bf16_kernel<NR, NV, 1>)
HELIX_KERNEL_TABLE(PvBf16, pv_bf16_kernel<NR, NV, 1>)
HELIX_KERNEL_TABLE(QkBf16Split, qk_bf16_kernel<NR, NV, 2>)
HELIX_KERNEL_TABLE(PvBf16Split, pv_bf16_kernel<NR, NV, 2>)
#undef HELIX_KERNEL_TABLE
constexpr auto kQkF32 = make_table<QkF32>(std::make_index_sequence<kNR * kNV>{});
constexpr auto kPvF32 = make_table<PvF32>(std::make_index_sequence<kNR * kNV>{});
// [Planes - 1]: the bf16 tables, plain and split.
constexpr std::array kQkBf16{make_table<QkBf16>(std::make_index_sequence<kNR * kNV>{}),
                             make_table<QkBf16Split>(std::make_index_sequence<kNR * kNV>{})};
constexpr std::array kPvBf16{make_table<PvBf16>(std::make_index_sequence<kNR * kNV>{}),
                             make_table<PvBf16Split>(std::make_index_sequence<kNR * kNV>{})};

inline int64_t table_index(int64_t nr, int64_t nv) { return (nr - 1) * kNV + (nv - 1); }

// ---- QK / PV over a tile ---------------------------------------------------------------------------------

int64_t qpack_bytes_f32(int64_t D, int64_t Mp) { return D * Mp * 4; }
// One plane of the bf16 q pack: [ceil(D/2)][Mp] pairs.
int64_t qpack_plane_words(int64_t D, int64_t Mp) { return (D + 1) / 2 * Mp; }
template <int Planes>
int64_t qpack_bytes_bf16(int64_t D, int64_t Mp) {
  return Planes * qpack_plane_words(D, Mp) * 4;
}

void pack_q_f32(const void* const* rows, int64_t M, int64_t Mp, int64_t D, DType q_dtype, void* qpack) {
  float* out = static_cast<float*>(qpack);  // [D][Mp]
  for (int64_t m = 0; m < Mp; ++m) {
    for (int64_t d = 0; d < D; ++d) {
      float v = 0.f;
      if (m < M) {
        v = q_dtype == DType::Float32 ? static_cast<const float*>(rows[m])[d]
                                      : bf16_to_float(static_cast<const bf16_t*>(rows[m])[d]);
      }
      out[d * Mp + m] = v;
    }
  }
}

// qpack [Planes][ceil(D/2)][Mp][2] bf16: plane 0 holds q rounded to bf16 (round to nearest even); the split
// set's plane 1 holds the rounding error q - plane 0, rounded to bf16 (zero for bf16 q). d >= D and rows
// m >= M are zero.
template <int Planes>
void pack_q_bf16(const void* const* rows, int64_t M, int64_t Mp, int64_t D, DType q_dtype, void* qpack) {
  bf16_t* hi = static_cast<bf16_t*>(qpack);
  bf16_t* lo = hi + 2 * qpack_plane_words(D, Mp);
  const int64_t Dh = (D + 1) / 2;
  for (int64_t m = 0; m < Mp; ++m) {
    for (int64_t d = 0; d < 2 * Dh; ++d) {
      const float x = m >= M || d >= D             ? 0.f
                      : q_dtype == DType::BFloat16 ? bf16_to_float(static_cast<const bf16_t*>(rows[m])[d])
                                                   : static_cast<const float*>(rows[m])[d];
      const int64_t at = ((d / 2) * Mp + m) * 2 + (d % 2);
      hi[at] = float_to_bf16(x);
      if constexpr (Planes == 2) lo[at] = float_to_bf16(x - bf16_to_float(hi[at]));
    }
  }
}

void qk_f32(const void* qpack, const void* const* keys, int64_t nt, int64_t D, int64_t Mp, float* St,
            const TileScratch&) {
  const float* qp = static_cast<const float*>(qpack);
  for (int64_t d0 = 0; d0 < D; d0 += kDChunk) {
    const int64_t dlen = std::min(kDChunk, D - d0);
    for (int64_t m0 = 0; m0 < Mp; m0 += 16 * kNV) {
      const int64_t nv = std::min<int64_t>(kNV, (Mp - m0) / 16);
      for (int64_t n0 = 0; n0 < nt; n0 += kNR) {
        const int64_t nr = std::min<int64_t>(kNR, nt - n0);
        kQkF32[table_index(nr, nv)](qp + d0 * Mp + m0, Mp, keys + n0, d0, dlen, St + n0 * Mp + m0, Mp, d0 > 0);
      }
    }
  }
}

void pv_f32(const float* P, const void* const* keys, int64_t nt, int64_t R, int64_t Mp, float* OT, const TileScratch&) {
  for (int64_t m0 = 0; m0 < Mp; m0 += 16 * kNV) {
    const int64_t nv = std::min<int64_t>(kNV, (Mp - m0) / 16);
    for (int64_t r0 = 0; r0 < R; r0 += kNR) {
      const int64_t nr = std::min<int64_t>(kNR, R - r0);
      kPvF32[table_index(nr, nv)](P + m0, Mp, keys, r0, nt, OT + r0 * Mp + m0, Mp);
    }
  }
}

template <int Planes>
void qk_bf16(const void* qpack, const void* const* keys, int64_t nt, int64_t D, int64_t Mp, float* St,
             const TileScratch&) {
  const uint32_t* qp = static_cast<const uint32_t*>(qpack);  // [Planes][ceil(D/2)][Mp] pairs
  const int64_t plane = qpack_plane_words(D, Mp);
  for (int64_t d0 = 0; d0 < D; d0 += kDChunk) {  // kDChunk is even: chunks start on a pair
    const int64_t dend = std::min(d0 + kDChunk, D);
    const int64_t kpairs = (dend - d0) / 2;
    const bool odd_tail = dend == D && (D % 2) == 1;
    const int64_t k0 = d0 / 2;
    for (int64_t m0 = 0; m0 < Mp; m0 += 16 * kNV) {
      const int64_t nv = std::min<int64_t>(kNV, (Mp - m0) / 16);
      for (int64_t n0 = 0; n0 < nt; n0 += kNR) {
        const int64_t nr = std::min<int64_t>(kNR, nt - n0);
        kQkBf16[Planes - 1][table_index(nr, nv)](qp + k0 * Mp + m0, Mp, plane, keys + n0, d0, kpairs, odd_tail,
                                                 St + n0 * Mp + m0, Mp, d0 > 0);
      }
    }
  }
}

// 16-bit interleave of the two 256-bit halves: [x0..x15, y0..y15] -> [x0, y0, x1, y1, ...].
HELIX_AVX512 inline __m512i interleave_halves(__m512i v) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                       5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, v);
}

// The split set's P pairs live in TileScratch::extra (both planes), the plain set's in p_pairs.
int64_t extra_bytes_split(int64_t, int64_t, int64_t Mp) { return 2 * (kKeyTile / 2) * Mp * 4; }

// x rounded to bf16 (round to nearest even), as float32.
HELIX_AVX512 inline __m512 round_bf16(__m512 x) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// pp [Planes][npairs][Mp] pairs (P[2k][m], P[2k+1][m]) in bf16, a key past nt is 0; plane 1 (split): the
// rounding errors P - bf16(P), rounded to bf16. Planes `plane` words apart.
template <int Planes>
HELIX_AVX512 void pack_p_pairs(const float* P, int64_t nt, int64_t Mp, uint32_t* pp, int64_t plane) {
  for (int64_t k = 0; k < (nt + 1) / 2; ++k) {
    const bool has_hi = 2 * k + 1 < nt;
    const float* p0 = P + 2 * k * Mp;
    const float* p1 = p0 + Mp;
    for (int64_t m = 0; m < Mp; m += 16) {
      const __m512 lo = _mm512_loadu_ps(p0 + m);
      const __m512 hi = has_hi ? _mm512_loadu_ps(p1 + m) : _mm512_setzero_ps();
      const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // [lo0..lo15, hi0..hi15]
      _mm512_storeu_si512(pp + k * Mp + m, interleave_halves(both));
      if constexpr (Planes == 2) {
        const __m512 lo_err = _mm512_sub_ps(lo, round_bf16(lo)), hi_err = _mm512_sub_ps(hi, round_bf16(hi));
        const __m512i errs = (__m512i)_mm512_cvtne2ps_pbh(hi_err, lo_err);
        _mm512_storeu_si512(pp + plane + k * Mp + m, interleave_halves(errs));
      }
    }
  }
}

// vp [npairs][R] pairs (key[2k][r], key[2k+1][r]); a key past nt is 0.
HELIX_AVX512 void pack_value_pairs(const void* const* keys, int64_t nt, int64_t R, uint32_t* vp) {
  for (int64_t k = 0; k < (nt + 1) / 2; ++k) {
    const bf16_t* v0 = static_cast<const bf16_t*>(keys[2 * k]);
    const bf16_t* v1 = 2 * k + 1 < nt ? static_cast<const bf16_t*>(keys[2 * k + 1]) : nullptr;
    for (int64_t r = 0; r < R; r += 16) {
      const __mmask16 mask =
          r + 16 <= R ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (R - r)) - 1u);
      const __m256i x = _mm256_maskz_loadu_epi16(mask, v0 + r);
      const __m256i y = v1 ? _mm256_maskz_loadu_epi16(mask, v1 + r) : _mm256_setzero_si256();
      const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(x), y, 1);
      _mm512_mask_storeu_epi32(vp + k * R + r, mask, interleave_halves(both));
    }
  }
}

template <int Planes>
HELIX_AVX512 void pv_bf16(const float* P, const void* const* keys, int64_t nt, int64_t R, int64_t Mp, float* OT,
                          const TileScratch& scratch) {
  const int64_t npairs = (nt + 1) / 2;
  // [Planes][npairs][Mp]
  uint32_t* pp = reinterpret_cast<uint32_t*>(Planes == 1 ? static_cast<void*>(scratch.p_pairs) : scratch.extra);
  const int64_t plane = (kKeyTile / 2) * Mp;
  uint32_t* vp = reinterpret_cast<uint32_t*>(scratch.v_pairs);  // [npairs][R]
  pack_p_pairs<Planes>(P, nt, Mp, pp, plane);
  pack_value_pairs(keys, nt, R, vp);
  for (int64_t m0 = 0; m0 < Mp; m0 += 16 * kNV) {
    const int64_t nv = std::min<int64_t>(kNV, (Mp - m0) / 16);
    for (int64_t r0 = 0; r0 < R; r0 += kNR) {
      const int64_t nr = std::min<int64_t>(kNR, R - r0);
      kPvBf16[Planes - 1][table_index(nr, nv)](pp + m0, Mp, plane, vp, R, r0, npairs, OT + r0 * Mp + m0, Mp);
    }
  }
}

// ---- online softmax --------------------------------------------------------------------------------------

HELIX_AVX512F bool softmax_avx512(float* St, int64_t nt, int64_t Mp, float c, float* m_run, float* l_run,
                                  float* alpha) {
  const __m512 vc = _mm512_set1_ps(c);
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 one = _mm512_set1_ps(1.f);
  __mmask16 changed = 0;
  for (int64_t m = 0; m < Mp; m += 16) {
    __m512 mx = neg_inf;
    for (int64_t n = 0; n < nt; ++n) mx = _mm512_max_ps(mx, _mm512_loadu_ps(St + n * Mp + m));
    const __m512 m_old = _mm512_loadu_ps(m_run + m);
    const __m512 m_new = _mm512_max_ps(m_old, _mm512_mul_ps(mx, vc));
    const __m512 m_safe =
        _mm512_mask_mov_ps(m_new, _mm512_cmp_ps_mask(m_new, neg_inf, _CMP_EQ_OQ), _mm512_setzero_ps());
    const __m512 a = exp2_flush_avx512(_mm512_sub_ps(m_old, m_safe));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t n = 0; n < nt; ++n) {
      float* s = St + n * Mp + m;
      const __m512 p = exp2_flush_avx512(_mm512_fmsub_ps(_mm512_loadu_ps(s), vc, m_safe));
      _mm512_storeu_ps(s, p);
      sum = _mm512_add_ps(sum, p);
    }
    _mm512_storeu_ps(l_run + m, _mm512_fmadd_ps(_mm512_loadu_ps(l_run + m), a, sum));
    _mm512_storeu_ps(m_run + m, m_new);
    _mm512_storeu_ps(alpha + m, a);
    changed |= _mm512_cmp_ps_mask(a, one, _CMP_NEQ_UQ);
  }
  return changed != 0;
}

const TileOps kAvx512F32{DType::Float32, kKeyTile, OLayout::Transposed, no_extra_bytes, qpack_bytes_f32,
                         pack_q_f32,     qk_f32,   softmax_avx512,      pv_f32};
const TileOps kAvx512Bf16{DType::BFloat16, kKeyTile,   OLayout::Transposed, no_extra_bytes, qpack_bytes_bf16<1>,
                          pack_q_bf16<1>,  qk_bf16<1>, softmax_avx512,      pv_bf16<1>};
const TileOps kAvx512Bf16Split{DType::BFloat16, kKeyTile,   OLayout::Transposed, extra_bytes_split, qpack_bytes_bf16<2>,
                               pack_q_bf16<2>,  qk_bf16<2>, softmax_avx512,      pv_bf16<2>};

}  // namespace

bool has_avx512f() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("fma");
  return has;
}

const TileOps* avx512_tile_ops() { return has_avx512f() ? &kAvx512F32 : nullptr; }

const TileOps* avx512_bf16_tile_ops(bool split) {
  static const bool has = has_avx512f() && __builtin_cpu_supports("avx512bf16");
  if (!has) return nullptr;
  return split ? &kAvx512Bf16Split : &kAvx512Bf16;
}

}  // namespace helix::detail

#else  // not x86-64 GCC/Clang: portable only

namespace helix::detail {
const TileOps* avx512_tile_ops() { return nullptr; }
const TileOps* avx512_bf16_tile_ops(bool) { return nullptr; }
}  // namespace helix::detail

#endif
