#include "helix/kv_transfer.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "helix/error.hpp"

namespace helix {

namespace {

// Rows of the engine's KV dtype, [num_layers, n, kv_lora_rank + rope dim].
void check_rows(const EngineConfig& c, const TensorView& t, const char* name, int64_t n) {
  check_tensor(t, name, 3, {c.kv_dtype});
  check_dim(t, name, 0, c.num_layers, "the number of layers");
  check_dim(t, name, 1, n, "the number of positions this rank owns");
  check_dim(t, name, 2, c.kv_row_width(), "kv_lora_rank + rope dim");
}

}  // namespace

int64_t kv_owned_count(int64_t num_positions, int64_t tokens_per_block, int64_t cp_rank, int64_t cp_size) {
  const int64_t full = num_positions / tokens_per_block;  // complete blocks; block b is on rank b % cp_size
  int64_t n = (full / cp_size + (cp_rank < full % cp_size ? 1 : 0)) * tokens_per_block;
  if (full % cp_size == cp_rank) n += num_positions % tokens_per_block;  // the partial last block
  return n;
}

std::vector<int64_t> kv_owned_positions(const BlockTable& table, int64_t seq_id) {
  HELIX_CHECK_ARG(table.has_sequence(seq_id), "unknown sequence ", seq_id);
  std::vector<int64_t> pos = table.positions(seq_id);
  std::sort(pos.begin(), pos.end());
  return pos;
}

void kv_read_rows(Engine& engine, int64_t seq_id, const TensorView& out) {
  const BlockTable& table = engine.kv_table();
  HELIX_CHECK_ARG(table.has_sequence(seq_id), "unknown sequence ", seq_id);
  const SequenceView v = table.view(seq_id);
  check_rows(engine.config(), out, "out", v.num_tokens);
  std::vector<int64_t> slots(static_cast<size_t>(v.num_tokens));  // slot order -> ascending positions
  std::iota(slots.begin(), slots.end(), int64_t{0});
  std::sort(slots.begin(), slots.end(), [&](int64_t a, int64_t b) { return v.positions[a] < v.positions[b]; });
  std::vector<int64_t> rows(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) rows[i] = v.pool_row(slots[i]);
  engine.backend().read_kv_rows(rows, out.data);
}

void kv_import_rows(Engine& engine, int64_t seq_id, int64_t num_positions, const TensorView& rows) {
  BlockTable& table = engine.kv_table();
  HELIX_CHECK_ARG(table.has_sequence(seq_id), "unknown sequence ", seq_id);
  HELIX_CHECK_ARG(table.num_held(seq_id) == 0, "kv_import_rows: sequence ", seq_id, " is not empty");
  HELIX_CHECK_ARG(num_positions >= 1, "argument 'num_positions' must be >= 1, got ", num_positions);
  const int64_t n = kv_owned_count(num_positions, table.tokens_per_block(), table.cp_rank(), table.cp_size());
  check_rows(engine.config(), rows, "rows", n);
  std::vector<int64_t> positions(static_cast<size_t>(num_positions));
  std::iota(positions.begin(), positions.end(), int64_t{0});
  const std::vector<int64_t> one_sequence(positions.size(), 0);  // q_seq_index
  StepPlan plan = table.plan_step(StepTokens{positions.data(), one_sequence.data(), &seq_id, num_positions, 1});
  std::vector<int64_t> dst = table.commit_step(plan);  // [num_positions]: pool row, -1 where not owned
  std::vector<int64_t> owned_rows, owned_positions;    // ascending positions
  for (int64_t p = 0; p < num_positions; ++p) {
    if (dst[static_cast<size_t>(p)] < 0) continue;
    owned_rows.push_back(dst[static_cast<size_t>(p)]);
    owned_positions.push_back(p);
  }
  try {
    engine.backend().write_kv_rows(owned_rows, owned_positions, rows.data);
  } catch (...) {
    table.undo_step(plan);
    throw;
  }
}

}  // namespace helix
