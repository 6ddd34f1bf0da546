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

void embedding(const TensorView& ids, const TensorView& table, int64_t vocab_start, const TensorView& out) {
  check_tensor(ids, "ids", 1, {DType::Int64});
  check_tensor(table, "table", 2, {DType::Float32, DType::BFloat16});
  check_tensor(out, "out", 2, {DType::Float32});
  const int64_t T = ids.dim(0), hidden = table.dim(1);
  check_dim(out, "out", 0, T, "ids.shape[0] (T)");
  check_dim(out, "out", 1, hidden, "table.shape[1] (hidden)");
  HELIX_CHECK_ARG(vocab_start >= 0, "argument 'vocab_start' must be >= 0, got ", vocab_start);
  EmbeddingParams p;
  p.ids = ids.ptr<const int64_t>();
  p.table = table.data;
  p.out = out.ptr<float>();
  p.T = T;
  p.V = table.dim(0);
  p.hidden = hidden;
  p.vocab_start = vocab_start;
  p.table_dtype = table.dtype;
  embedding_cpu(p);
}

}  // namespace helix
