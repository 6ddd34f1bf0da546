// helix/kv_transfer.hpp: a sequence's rows out of an engine's pools and into another's (one rank here; the
// CP ranks' share under mpiexec: tests/mpi/kv_file_roundtrip.py).
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "helix/block_table.hpp"
#include "helix/engine.hpp"
#include "helix/error.hpp"
#include "helix/kv_transfer.hpp"

using namespace helix;

namespace {

constexpr int64_t kLayers = 2, kWidth = 4;  // kv_lora_rank 2 + rope dim 2

// An engine of one rank with kLayers layers and num_blocks blocks of tpb tokens (no weights: the hand-off
// needs none).
struct TinyEngine {
  std::unique_ptr<Communicator> self = make_self_communicator();
  Engine engine;
  static EngineConfig config(int64_t num_blocks, int64_t tpb) {
    EngineConfig c;
    c.vocab_size = 8, c.hidden_size = 4, c.num_layers = kLayers, c.num_heads = 1, c.kv_lora_rank = 2;
    c.qk_nope_head_dim = 2, c.qk_rope_head_dim = 2, c.v_head_dim = 2, c.intermediate_size = 4;
    c.rope_inv_freq = {1.f};
    c.tokens_per_block = tpb, c.num_kv_blocks = num_blocks;
    return c;
  }
  TinyEngine(int64_t num_blocks, int64_t tpb) : engine(config(num_blocks, tpb), *self) {}
};

// rows [kLayers, n, kWidth] whose values encode (layer, position, column)
std::vector<float> encoded_rows(const std::vector<int64_t>& positions) {
  std::vector<float> out;
  for (int64_t l = 0; l < kLayers; ++l) {
    for (int64_t p : positions) {
      for (int64_t d = 0; d < kWidth; ++d) out.push_back(static_cast<float>(l * 10000 + p * 10 + d));
    }
  }
  return out;
}

TensorView view_of(std::vector<float>& v, int64_t n) {
  return TensorView{v.data(), DType::Float32, {kLayers, n, kWidth}};
}

}  // namespace

TEST(KVTransfer, OwnedCountFollowsTheBlockRule) {
  for (int64_t cp = 1; cp <= 4; ++cp) {
    for (int64_t tpb = 1; tpb <= 5; ++tpb) {
      for (int64_t r = 0; r < cp; ++r) {
        BlockTable t(1, tpb, r, cp);
        for (int64_t n = 0; n <= 23; ++n) {
          int64_t expected = 0;
          for (int64_t p = 0; p < n; ++p) expected += t.owns(p) ? 1 : 0;
          EXPECT_EQ(kv_owned_count(n, tpb, r, cp), expected) << "cp " << cp << " tpb " << tpb << " n " << n;
        }
      }
    }
  }
}

TEST(KVTransfer, ImportThenReadGivesTheRowsBack) {
  const int64_t n = 11;
  TinyEngine t(8, 2);
  t.engine.add_sequence(5, n);
  std::vector<int64_t> all(n);
  for (int64_t p = 0; p < n; ++p) all[static_cast<size_t>(p)] = p;
  std::vector<float> rows = encoded_rows(all);
  kv_import_rows(t.engine, 5, n, view_of(rows, n));
  EXPECT_EQ(t.engine.block_table().held_positions(5).size(), static_cast<size_t>(n));
  EXPECT_EQ(kv_owned_positions(t.engine.block_table(), 5), all);
  std::vector<float> back(rows.size(), -1.f);
  kv_read_rows(t.engine, 5, view_of(back, n));
  EXPECT_EQ(back, rows);
}

TEST(KVTransfer, ABadImportChangesNothing) {
  TinyEngine t(2, 2);
  Engine& e = t.engine;
  e.add_sequence(1);
  std::vector<float> rows = encoded_rows({0, 1, 2, 3, 4});
  EXPECT_THROW(kv_import_rows(e, 1, 5, view_of(rows, 5)), KVCacheFullError);  // 3 blocks > 2
  EXPECT_THROW(kv_import_rows(e, 1, 4, view_of(rows, 5)), ArgumentError);     // 4 rows expected
  EXPECT_THROW(kv_import_rows(e, 2, 4, view_of(rows, 4)), ArgumentError);     // unknown sequence
  TensorView bf16 = view_of(rows, 4);
  bf16.dtype = DType::BFloat16;
  EXPECT_THROW(kv_import_rows(e, 1, 4, bf16), ArgumentError);
  EXPECT_EQ(e.num_free_blocks(), 2);
  EXPECT_TRUE(e.block_table().held_positions(1).empty());
  kv_import_rows(e, 1, 4, view_of(rows, 4));
  EXPECT_THROW(kv_import_rows(e, 1, 4, view_of(rows, 4)), ArgumentError);  // not empty
  std::vector<float> out(3 * kLayers * kWidth);
  EXPECT_THROW(kv_read_rows(e, 1, view_of(out, 3)), ArgumentError);  // 4 rows held
}
