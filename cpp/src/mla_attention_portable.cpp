// Portable tile operations of the MLA attention kernel: plain C++ that the compiler vectorizes for the
// baseline x86-64 (SSE2) or any other target. The inner loops run along the query rows m (contiguous), so
// they vectorize without intrinsics. bf16 keys are widened on the fly (exact); q stays as given.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "mla_attention_tiles.hpp"

namespace helix::detail {
namespace {

template <class KV>
inline float key_at(const KV* row, int64_t i) {
  if constexpr (std::is_same_v<KV, float>) {
    return row[i];
  } else {
    return bf16_to_float(row[i]);
  }
}

int64_t qpack_bytes_f32(int64_t D, int64_t Mp) { return D * Mp * 4; }

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

template <class KV>
void qk_portable(const void* qpack, const void* const* keys, int64_t nt, int64_t D, int64_t Mp, float* St,
                 const TileScratch&) {
  const float* qp = static_cast<const float*>(qpack);
  for (int64_t n = 0; n < nt; ++n) {
    const KV* k = static_cast<const KV*>(keys[n]);
    float* s = St + n * Mp;
    std::fill(s, s + Mp, 0.f);
    for (int64_t d = 0; d < D; ++d) {
      const float a = key_at(k, d);
      const float* q = qp + d * Mp;
      for (int64_t m = 0; m < Mp; ++m) s[m] += a * q[m];
    }
  }
}

bool softmax_portable(float* St, int64_t nt, int64_t Mp, float c, float* m_run, float* l_run, float* alpha) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  bool rescale = false;
  for (int64_t m = 0; m < Mp; ++m) {
    float mx = kNegInf;
    for (int64_t n = 0; n < nt; ++n) mx = std::max(mx, St[n * Mp + m]);
    const float m_new = std::max(m_run[m], mx * c);
    const float m_safe = m_new == kNegInf ? 0.f : m_new;
    const float a = exp2_flush(m_run[m] - m_safe);
    float sum = 0.f;
    for (int64_t n = 0; n < nt; ++n) {
      const float p = exp2_flush(St[n * Mp + m] * c - m_safe);
      St[n * Mp + m] = p;
      sum += p;
    }
    l_run[m] = l_run[m] * a + sum;
    m_run[m] = m_new;
    alpha[m] = a;
    rescale = rescale || a != 1.f;
  }
  return rescale;
}

template <class KV>
void pv_portable(const float* P, const void* const* keys, int64_t nt, int64_t R, int64_t Mp, float* OT,
                 const TileScratch&) {
  for (int64_t n = 0; n < nt; ++n) {
    const KV* v = static_cast<const KV*>(keys[n]);
    const float* p = P + n * Mp;
    for (int64_t r = 0; r < R; ++r) {
      const float a = key_at(v, r);
      float* o = OT + r * Mp;
      for (int64_t m = 0; m < Mp; ++m) o[m] += a * p[m];
    }
  }
}

const TileOps kPortableF32{DType::Float32, kKeyTile,           OLayout::Transposed, no_extra_bytes,    qpack_bytes_f32,
                           pack_q_f32,     qk_portable<float>, softmax_portable,    pv_portable<float>};
const TileOps kPortableBf16{DType::BFloat16,     kKeyTile,         OLayout::Transposed,
                            no_extra_bytes,      qpack_bytes_f32,  pack_q_f32,
                            qk_portable<bf16_t>, softmax_portable, pv_portable<bf16_t>};

}  // namespace

const TileOps& portable_tile_ops(DType kv_dtype) { return kv_dtype == DType::BFloat16 ? kPortableBf16 : kPortableF32; }

}  // namespace helix::detail
