// helix/kv_transfer.hpp: a sequence's rows out of one rank's pools and into another's, per CP rank.
#include <gtest/gtest.h>

#include <vector>

#include "helix/block_table.hpp"
#include "helix/error.hpp"
#include "helix/kv_pool.hpp"
#include "helix/kv_transfer.hpp"

using namespace helix;

namespace {

constexpr int64_t kLayers = 2, kWidth = 3;

std::vector<KVPool> make_pools(int64_t blocks, int64_t tpb) {
  std::vector<KVPool> pools;
  for (int64_t l = 0; l < kLayers; ++l) pools.emplace_back(blocks, tpb, kWidth, DType::Float32);
  return pools;
}

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

TEST(KVTransfer, ImportThenReadGivesTheRowsBackOnEveryCPRank) {
  const int64_t cp = 3, tpb = 2, n = 11;
  for (int64_t r = 0; r < cp; ++r) {
    BlockTable table(8, tpb, r, cp);
    std::vector<KVPool> pools = make_pools(8, tpb);
    table.add_sequence(5, n);
    std::vector<int64_t> mine;
    for (int64_t p = 0; p < n; ++p) {
      if (table.owns(p)) mine.push_back(p);
    }
    std::vector<float> rows = encoded_rows(mine);
    kv_import_rows(table, pools, 5, n, view_of(rows, static_cast<int64_t>(mine.size())));
    EXPECT_EQ(table.held_positions(5).size(), static_cast<size_t>(n));
    EXPECT_EQ(kv_owned_positions(table, 5), mine);
    std::vector<float> back(rows.size(), -1.f);
    kv_read_rows(table, pools, 5, view_of(back, static_cast<int64_t>(mine.size())));
    EXPECT_EQ(back, rows);
  }
}

TEST(KVTransfer, ABadImportChangesNothing) {
  BlockTable table(2, 2, 0, 1);
  std::vector<KVPool> pools = make_pools(2, 2);
  table.add_sequence(1);
  std::vector<float> rows = encoded_rows({0, 1, 2, 3, 4});
  EXPECT_THROW(kv_import_rows(table, pools, 1, 5, view_of(rows, 5)), KVCacheFullError);  // 3 blocks > 2
  EXPECT_THROW(kv_import_rows(table, pools, 1, 4, view_of(rows, 5)), ArgumentError);     // 4 rows expected
  EXPECT_THROW(kv_import_rows(table, pools, 2, 4, view_of(rows, 4)), ArgumentError);     // unknown sequence
  TensorView bf16 = view_of(rows, 4);
  bf16.dtype = DType::BFloat16;
  EXPECT_THROW(kv_import_rows(table, pools, 1, 4, bf16), ArgumentError);
  EXPECT_EQ(table.num_free_blocks(), 2);
  EXPECT_TRUE(table.held_positions(1).empty());
  kv_import_rows(table, pools, 1, 4, view_of(rows, 4));
  EXPECT_THROW(kv_import_rows(table, pools, 1, 4, view_of(rows, 4)), ArgumentError);  // not empty
  std::vector<float> out(3 * kLayers * kWidth);
  EXPECT_THROW(kv_read_rows(table, pools, 1, view_of(out, 3)), ArgumentError);  // 4 rows held
}
