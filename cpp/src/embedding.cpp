#include "helix/ops/embedding.hpp"

#include <algorithm>

namespace helix {

void embedding_cpu(const EmbeddingParams& p) {
  for (int64_t t = 0; t < p.T; ++t) {
    float* out = p.out + t * p.hidden;
    const int64_t row = p.ids[t] - p.vocab_start;
    if (row < 0 || row >= p.V) {
      std::fill(out, out + p.hidden, 0.f);
    } else if (p.table_dtype == DType::BFloat16) {
      const bf16_t* src = static_cast<const bf16_t*>(p.table) + row * p.hidden;
      for (int64_t d = 0; d < p.hidden; ++d) out[d] = bf16_to_float(src[d]);
    } else {
      const float* src = static_cast<const float*>(p.table) + row * p.hidden;
      std::copy(src, src + p.hidden, out);
    }
  }
}

}  // namespace helix
