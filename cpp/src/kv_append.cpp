#include "helix/ops/kv_append.hpp"

#include <cstring>

namespace helix {

void kv_append_cpu(const KvAppendParams& p) {
  auto* pool = static_cast<unsigned char*>(p.pool);
  const auto* rows = static_cast<const unsigned char*>(p.rows);
  for (int64_t i = 0; i < p.n; ++i) {
    if (p.dst_rows[i] < 0) continue;  // a token another CP rank owns
    std::memcpy(pool + p.dst_rows[i] * p.row_bytes, rows + i * p.row_bytes, static_cast<size_t>(p.row_bytes));
  }
}

}  // namespace helix
