// exp2 on 16 floats for the AVX-512 softmax loops (the MLA attention kernel, the expanded form's rows);
// compiled per function (target attribute), so the library still runs on any x86-64 CPU.
#pragma once

#include <immintrin.h>

#if defined(__x86_64__) && defined(__GNUC__)

#define HELIX_AVX512F __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

namespace helix::detail {

// 2^x for x <= 0 with underflow (x < -126) flushed to 0; NaN stays NaN. Cephes exp2f polynomial on
// [-0.5, 0.5] after rounding to the nearest integer: relative error about 2e-7.
HELIX_AVX512F inline __m512 exp2_flush_avx512(__m512 x) {
  const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-127.f), x);  // NaN in x passes through (second operand)
  const __m512 xi = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(xc, xi);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  const __m512 r = _mm512_scalef_ps(p, xi);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.f), _CMP_NLT_UQ);
  return _mm512_maskz_mov_ps(keep, r);
}

}  // namespace helix::detail

#endif
