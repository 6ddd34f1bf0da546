#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "helix/error.hpp"
#include "helix/kv_cache.hpp"

using namespace helix;

namespace {

// Row r of an [n, D] float32 matrix filled with distinct values: rows[i][d] = base + i + d / 1000.
std::vector<float> make_rows(int64_t n, int64_t D, float base) {
  std::vector<float> rows(static_cast<size_t>(n * D));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < D; ++d) rows[i * D + d] = base + static_cast<float>(i) + static_cast<float>(d) / 1000;
  return rows;
}

// The stored float32 row of slot k of `seq_id`, read through the view as a kernel would.
std::vector<float> read_slot(const PagedKVCache& c, int64_t seq_id, int64_t k) {
  const auto* row = static_cast<const float*>(c.pool().row(c.table().view(seq_id).pool_row(k)));
  return std::vector<float>(row, row + c.pool().head_dim());
}

// A fingerprint of everything observable, to prove failed calls change nothing.
struct Snapshot {
  int64_t free_blocks;
  std::vector<int64_t> ids;
  std::vector<std::vector<int64_t>> positions;
  std::vector<std::vector<int32_t>> tables;
  std::vector<unsigned char> pool;
  bool operator==(const Snapshot&) const = default;
};

Snapshot snapshot(const PagedKVCache& c) {
  Snapshot s{c.table().num_free_blocks(), c.table().sequence_ids(), {}, {}, {}};
  const int64_t tpb = c.table().tokens_per_block();
  for (int64_t id : s.ids) {
    s.positions.push_back(c.table().positions(id));
    SequenceView v = c.table().view(id);
    s.tables.emplace_back(v.block_table, v.block_table + (v.num_tokens + tpb - 1) / tpb);
  }
  const auto* p = static_cast<const unsigned char*>(c.pool().data());
  s.pool.assign(p, p + c.table().num_blocks() * tpb * c.pool().row_bytes());
  return s;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no exception>";
}

}  // namespace

TEST(PagedKVCache, ConstructorValidatesArguments) {
  EXPECT_THROW(PagedKVCache(0, 4, 8, DType::Float32), ArgumentError);
  EXPECT_THROW(PagedKVCache(4, 0, 8, DType::Float32), ArgumentError);
  EXPECT_THROW(PagedKVCache(4, 4, 0, DType::Float32), ArgumentError);
  EXPECT_THROW(PagedKVCache(4, 4, 8, DType::Int64), ArgumentError);
  EXPECT_THROW(PagedKVCache(4, 4, 8, DType::Float16), ArgumentError);
  EXPECT_THROW(PagedKVCache(4, 4, 8, DType::Float32, 0, 0), ArgumentError);
  EXPECT_THROW(PagedKVCache(4, 4, 8, DType::Float32, 2, 2), ArgumentError);
  EXPECT_THROW(PagedKVCache(4, 4, 8, DType::Float32, -1, 2), ArgumentError);
  EXPECT_THROW(PagedKVCache(int64_t{1} << 40, 1 << 20, 1 << 20, DType::Float32), ArgumentError);
  EXPECT_NE(message_of([] { PagedKVCache(4, 4, 8, DType::Float32, 3, 2); }).find("cp_rank"), std::string::npos);
  PagedKVCache c(4, 4, 8, DType::BFloat16, 1, 2);
  EXPECT_EQ(c.table().num_blocks(), 4);
  EXPECT_EQ(c.table().num_free_blocks(), 4);
  EXPECT_EQ(c.pool().row_bytes(), 16);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(c.pool().data()) % 64, 0u);
}

TEST(PagedKVCache, AllocatesBlocksAndStoresRowsInSlotOrder) {
  const int64_t D = 5;
  PagedKVCache c(6, 4, D, DType::Float32);
  c.table().add_sequence(7);
  EXPECT_TRUE(c.table().has_sequence(7));
  EXPECT_FALSE(c.table().has_sequence(8));
  EXPECT_EQ(c.table().view(7).num_tokens, 0);
  // 10 tokens in three appends: 3 + 1 + 6 crosses block boundaries at 4 and 8.
  std::vector<int64_t> pos(10);
  for (int64_t i = 0; i < 10; ++i) pos[i] = i;
  auto rows = make_rows(10, D, 100);
  c.append(7, pos.data(), 3, rows.data());
  EXPECT_EQ(c.table().num_free_blocks(), 5);
  c.append(7, pos.data() + 3, 1, rows.data() + 3 * D);
  EXPECT_EQ(c.table().num_free_blocks(), 5);  // exactly one full block
  c.append(7, pos.data() + 4, 6, rows.data() + 4 * D);
  EXPECT_EQ(c.table().num_free_blocks(), 3);
  EXPECT_EQ(c.table().positions(7), pos);
  SequenceView v = c.table().view(7);
  EXPECT_EQ(v.num_tokens, 10);
  for (int64_t k = 0; k < 10; ++k) {
    EXPECT_EQ(v.positions[k], k);
    EXPECT_EQ(read_slot(c, 7, k), std::vector<float>(rows.begin() + k * D, rows.begin() + (k + 1) * D));
  }
  // The lowest free block is handed out first.
  EXPECT_EQ(v.block_table[0], 0);
  EXPECT_EQ(v.block_table[1], 1);
  EXPECT_EQ(v.block_table[2], 2);
  // An empty append is a no-op.
  c.append(7, nullptr, 0, nullptr);
  EXPECT_EQ(c.table().view(7).num_tokens, 10);
}

TEST(PagedKVCache, FreeListReusesBlocks) {
  PagedKVCache c(4, 2, 3, DType::Float32);
  auto rows = make_rows(4, 3, 1);
  const int64_t pos[4] = {0, 1, 2, 3};
  c.table().add_sequence(1);
  c.table().add_sequence(2);
  c.append(1, pos, 4, rows.data());  // blocks 0, 1
  c.append(2, pos, 3, rows.data());  // blocks 2, 3
  EXPECT_EQ(c.table().num_free_blocks(), 0);
  std::vector<int32_t> freed(c.table().view(1).block_table, c.table().view(1).block_table + 2);
  c.table().free_sequence(1);
  EXPECT_FALSE(c.table().has_sequence(1));
  EXPECT_EQ(c.table().num_free_blocks(), 2);
  EXPECT_THROW(c.table().free_sequence(1), ArgumentError);
  c.table().add_sequence(1);  // the id may be reused after free
  EXPECT_EQ(c.table().positions(1).size(), 0u);
  c.table().add_sequence(3);
  c.append(3, pos, 4, rows.data());
  std::vector<int32_t> got(c.table().view(3).block_table, c.table().view(3).block_table + 2);
  EXPECT_EQ(got, freed);
  EXPECT_EQ(c.table().num_free_blocks(), 0);
  for (int64_t k = 0; k < 4; ++k) EXPECT_EQ(read_slot(c, 3, k)[0], rows[k * 3]);
  // Sequence 2 was not disturbed.
  for (int64_t k = 0; k < 3; ++k) EXPECT_EQ(read_slot(c, 2, k)[0], rows[k * 3]);
  EXPECT_EQ(c.table().sequence_ids(), (std::vector<int64_t>{1, 2, 3}));
}

TEST(PagedKVCache, ExhaustionThrowsAndLeavesCacheUnchanged) {
  PagedKVCache c(3, 4, 2, DType::Float32);
  c.table().add_sequence(0);
  c.table().add_sequence(1);
  std::vector<int64_t> pos(20);
  for (int64_t i = 0; i < 20; ++i) pos[i] = i;
  auto rows = make_rows(20, 2, 0);
  c.append(0, pos.data(), 6, rows.data());  // 2 blocks
  const Snapshot before = snapshot(c);
  // 6 + 7 = 13 tokens need a third and a fourth block; only one is free.
  std::string msg = message_of([&] { c.append(0, pos.data() + 6, 7, rows.data()); });
  EXPECT_EQ(msg,
            "KV cache full: the step needs 2 more block(s) on CP rank 0 of 1, which has only 1 of 3 free "
            "(neither held nor reserved)");
  EXPECT_THROW(c.append(0, pos.data() + 6, 7, rows.data()), KVCacheFullError);
  EXPECT_THROW(c.append(1, pos.data(), 5, rows.data()), KVCacheFullError);
  EXPECT_EQ(snapshot(c), before);
  // What fits still works afterwards: 6 + 6 = 12 tokens fill exactly three blocks.
  c.append(0, pos.data() + 6, 6, rows.data());
  EXPECT_EQ(c.table().num_free_blocks(), 0);
  EXPECT_THROW(c.append(1, pos.data(), 1, rows.data()), KVCacheFullError);
}

TEST(PagedKVCache, ArgumentErrorsLeaveCacheUnchanged) {
  PagedKVCache c(4, 4, 2, DType::Float32, 0, 2);  // rank 0 owns positions 0-3, 8-11, ...
  c.table().add_sequence(5);
  const int64_t first[3] = {0, 1, 2};
  auto rows = make_rows(8, 2, 0);
  c.append(5, first, 3, rows.data());
  const Snapshot before = snapshot(c);

  EXPECT_THROW(c.table().add_sequence(5), ArgumentError);
  EXPECT_NE(message_of([&] { c.table().add_sequence(5); }).find("sequence 5 already exists"), std::string::npos);
  EXPECT_NE(message_of([&] { c.append(6, first, 1, rows.data()); }).find("unknown sequence 6"), std::string::npos);
  EXPECT_THROW(c.table().positions(6), ArgumentError);
  EXPECT_THROW(c.table().view(6), ArgumentError);

  // Foreign position (in the middle of a valid batch): names the owning rank.
  const int64_t foreign[3] = {3, 4, 8};
  std::string msg = message_of([&] { c.append(5, foreign, 3, rows.data()); });
  EXPECT_NE(msg.find("position 4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("CP rank 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'positions'"), std::string::npos) << msg;
  // Already held.
  const int64_t held[2] = {3, 1};
  msg = message_of([&] { c.append(5, held, 2, rows.data()); });
  EXPECT_NE(msg.find("= 1 is"), std::string::npos) << msg;
  EXPECT_NE(msg.find("already held"), std::string::npos) << msg;
  // Twice in one call.
  const int64_t twice[3] = {9, 3, 9};
  msg = message_of([&] { c.append(5, twice, 3, rows.data()); });
  EXPECT_NE(msg.find("= 9 repeats"), std::string::npos) << msg;
  EXPECT_NE(msg.find("repeats positions[0]"), std::string::npos) << msg;
  // Negative.
  const int64_t negative[2] = {3, -4};
  msg = message_of([&] { c.append(5, negative, 2, rows.data()); });
  EXPECT_NE(msg.find("-4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("negative"), std::string::npos) << msg;
  EXPECT_THROW(c.append(5, first, -1, rows.data()), ArgumentError);
  EXPECT_THROW(c.append(5, nullptr, 1, rows.data()), ArgumentError);
  const int64_t fresh[1] = {3};
  EXPECT_THROW(c.append(5, fresh, 1, nullptr), ArgumentError);
  EXPECT_THROW(c.table().free_sequence(6), ArgumentError);
  EXPECT_EQ(snapshot(c), before);
}

TEST(PagedKVCache, OwnershipRuleForCpSizesOneToFour) {
  const int64_t tpb = 4, D = 3, S = 4 * tpb * 3 + 1;  // 49 tokens: ends one past a block boundary
  for (int64_t cp = 1; cp <= 4; ++cp) {
    std::vector<int64_t> all(S);
    for (int64_t i = 0; i < S; ++i) all[i] = i;
    auto rows = make_rows(S, D, 0);
    int64_t total = 0;
    for (int64_t r = 0; r < cp; ++r) {
      PagedKVCache c(16, tpb, D, DType::Float32, r, cp);
      c.table().add_sequence(0);
      // Each rank is offered the whole sequence; it keeps exactly its own positions.
      std::vector<int64_t> mine;
      std::vector<float> my_rows;
      for (int64_t p = 0; p < S; ++p) {
        EXPECT_EQ(c.table().owner_rank(p), (p / tpb) % cp);
        EXPECT_EQ(c.table().owns(p), (p / tpb) % cp == r);
        if (c.table().owns(p)) {
          mine.push_back(p);
          my_rows.insert(my_rows.end(), rows.begin() + p * D, rows.begin() + (p + 1) * D);
        }
      }
      EXPECT_FALSE(c.table().owns(-1));
      const int64_t need = (static_cast<int64_t>(mine.size()) + tpb - 1) / tpb;
      EXPECT_EQ(c.table().blocks_for_tokens(S)[r], need);
      // Appended one token at a time (decode) in position order.
      for (size_t k = 0; k < mine.size(); ++k) c.append(0, &mine[k], 1, my_rows.data() + k * D);
      EXPECT_EQ(c.table().positions(0), mine);
      EXPECT_EQ(c.table().num_free_blocks(), 16 - need);
      for (size_t k = 0; k < mine.size(); ++k) EXPECT_EQ(read_slot(c, 0, static_cast<int64_t>(k))[0], my_rows[k * D]);
      // Any position of another rank is rejected.
      for (int64_t p = S; p < S + cp * tpb; ++p) {
        if (!c.table().owns(p)) EXPECT_THROW(c.append(0, &p, 1, rows.data()), ArgumentError);
      }
      total += static_cast<int64_t>(mine.size());
    }
    EXPECT_EQ(total, S);  // the ranks partition the sequence
  }
}

TEST(PagedKVCache, PacksOwnedPositionsDenselyInAppendOrder) {
  // cp = 2, tpb = 2: rank 1 owns 2, 3, 6, 7, 10, 11... Appended out of order, they fill slots in order.
  PagedKVCache c(4, 2, 1, DType::Float32, 1, 2);
  c.table().add_sequence(0);
  const int64_t pos[5] = {7, 2, 10, 3, 6};
  const float rows[5] = {7, 2, 10, 3, 6};
  c.append(0, pos, 5, rows);
  EXPECT_EQ(c.table().positions(0), (std::vector<int64_t>{7, 2, 10, 3, 6}));
  EXPECT_EQ(c.table().num_free_blocks(), 1);  // 5 tokens in 3 blocks, no holes
  for (int64_t k = 0; k < 5; ++k) EXPECT_EQ(read_slot(c, 0, k)[0], rows[k]);
}

TEST(PagedKVCache, BFloat16StorageRoundTrip) {
  const int64_t D = 7;
  PagedKVCache c(2, 3, D, DType::BFloat16);
  c.table().add_sequence(0);
  std::vector<bf16_t> rows(static_cast<size_t>(4 * D));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = float_to_bf16(0.1f * static_cast<float>(i) - 1.3f);
  const int64_t pos[4] = {0, 1, 2, 3};
  c.append(0, pos, 4, rows.data());
  SequenceView v = c.table().view(0);
  for (int64_t k = 0; k < 4; ++k) {
    const auto* row = static_cast<const bf16_t*>(c.pool().row(v.pool_row(k)));
    for (int64_t d = 0; d < D; ++d) EXPECT_EQ(row[d], rows[k * D + d]);  // bit-exact
  }
}

TEST(PagedKVCache, PoisonUnusedTouchesOnlyEmptySlots) {
  for (DType dt : {DType::Float32, DType::BFloat16}) {
    const int64_t tpb = 4, D = 2, nb = 5;
    PagedKVCache c(nb, tpb, D, dt);
    c.table().add_sequence(0);
    c.table().add_sequence(1);
    std::vector<unsigned char> rows(static_cast<size_t>(8 * c.pool().row_bytes()), 0x3c);  // finite in both dtypes
    const int64_t pos[6] = {0, 1, 2, 3, 4, 5};
    c.append(0, pos, 6, rows.data());  // 1.5 blocks
    c.append(1, pos, 4, rows.data());  // exactly 1 block
    c.poison_unused(std::numeric_limits<float>::quiet_NaN());
    // Mark the used slots, then check every element of the pool.
    std::vector<bool> used(static_cast<size_t>(nb * tpb), false);
    for (int64_t id : {0, 1}) {
      SequenceView v = c.table().view(id);
      for (int64_t k = 0; k < v.num_tokens; ++k) used[v.pool_row(k)] = true;
    }
    int64_t poisoned = 0;
    for (int64_t s = 0; s < nb * tpb; ++s) {
      for (int64_t d = 0; d < D; ++d) {
        float x = dt == DType::Float32 ? static_cast<const float*>(c.pool().data())[s * D + d]
                                       : bf16_to_float(static_cast<const bf16_t*>(c.pool().data())[s * D + d]);
        EXPECT_EQ(std::isnan(x), !used[s]) << "slot " << s;
        poisoned += std::isnan(x) ? 1 : 0;
      }
    }
    EXPECT_EQ(poisoned, (nb * tpb - 10) * D);
  }
}
