// helix::BlockTable: the global view that makes a step all or nothing on every CP rank.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <typeinfo>
#include <vector>

#include "helix/block_table.hpp"
#include "helix/error.hpp"

using namespace helix;

namespace {

// Everything observable of one rank's table.
struct Snapshot {
  std::vector<int64_t> free, unreserved, ids;
  int64_t num_free;
  std::vector<std::vector<int64_t>> positions, held;
  std::vector<std::vector<int32_t>> blocks;
  bool operator==(const Snapshot&) const = default;
};

Snapshot snapshot(const BlockTable& t) {
  Snapshot s{t.free_blocks(), t.unreserved_blocks(), t.sequence_ids(), t.num_free_blocks(), {}, {}, {}};
  for (int64_t id : s.ids) {
    const SequenceView v = t.view(id);
    s.positions.push_back(t.positions(id));
    s.held.push_back(t.held_positions(id));
    s.blocks.emplace_back(v.block_table, v.block_table + (v.num_tokens + v.tokens_per_block - 1) / v.tokens_per_block);
  }
  return s;
}

// One step as host vectors.
struct Step {
  std::vector<int64_t> positions, q_seq_index, seq_ids;
  StepTokens tokens() const {
    return StepTokens{positions.data(), q_seq_index.data(), seq_ids.data(), static_cast<int64_t>(positions.size()),
                      static_cast<int64_t>(seq_ids.size())};
  }
};

// positions [first, last) of one sequence
Step range(int64_t seq_id, int64_t first, int64_t last) {
  Step s{{}, {}, {seq_id}};
  for (int64_t p = first; p < last; ++p) {
    s.positions.push_back(p);
    s.q_seq_index.push_back(0);
  }
  return s;
}

std::vector<int64_t> commit(BlockTable& t, const Step& s) {
  StepPlan plan = t.plan_step(s.tokens());
  return t.commit_step(plan);
}

// The exception a call throws: "<type>: <message>", or "" when it throws none.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const KVCacheFullError& e) {
    return std::string("KVCacheFullError: ") + e.what();
  } catch (const ArgumentError& e) {
    return std::string("ArgumentError: ") + e.what();
  } catch (const std::exception& e) {
    return std::string("other: ") + e.what();
  }
  return "";
}

// cp tables, one per CP rank, that saw the same calls.
std::vector<BlockTable> ranks(int64_t num_blocks, int64_t tpb, int64_t cp) {
  std::vector<BlockTable> t;
  for (int64_t r = 0; r < cp; ++r) t.emplace_back(num_blocks, tpb, r, cp);
  return t;
}

}  // namespace

TEST(BlockTable, ConstructorValidatesArguments) {
  EXPECT_THROW(BlockTable(0, 4), ArgumentError);
  EXPECT_THROW(BlockTable(int64_t{1} << 31, 4), ArgumentError);
  EXPECT_THROW(BlockTable(4, 0), ArgumentError);
  EXPECT_THROW(BlockTable(4, int64_t{1} << 62), ArgumentError);
  EXPECT_THROW(BlockTable(4, 4, 0, 0), ArgumentError);
  EXPECT_THROW(BlockTable(4, 4, 2, 2), ArgumentError);
  EXPECT_THROW(BlockTable(4, 4, -1, 2), ArgumentError);
  const BlockTable t(4, 4, 1, 3);
  EXPECT_EQ(t.free_blocks(), (std::vector<int64_t>{4, 4, 4}));
  EXPECT_EQ(t.num_free_blocks(), 4);
}

TEST(BlockTable, BlocksForTokensFollowTheOwnershipRule) {
  for (int64_t cp = 1; cp <= 4; ++cp) {
    const BlockTable t(64, 4, 0, cp);
    for (int64_t n : {0, 1, 4, 5, 16, 17, 33, 49}) {
      std::vector<int64_t> expect(static_cast<size_t>(cp), 0);
      for (int64_t b = 0; b * 4 < n; ++b) expect[b % cp] += 1;
      EXPECT_EQ(t.blocks_for_tokens(n), expect) << "cp " << cp << " n " << n;
    }
  }
  EXPECT_THROW(BlockTable(4, 4).blocks_for_tokens(-1), ArgumentError);
}

TEST(BlockTable, EveryRankKeepsTheSameGlobalView) {
  const int64_t tpb = 2, cp = 3;
  auto t = ranks(8, tpb, cp);
  // Two sequences: a prompt chunk of each, then decode steps of both, then one is freed.
  const Step prompt{{0, 1, 2, 3, 4, 0, 1, 2}, {0, 0, 0, 0, 0, 1, 1, 1}, {10, 20}};
  for (auto& r : t) {
    r.add_sequence(10);
    r.add_sequence(20);
    const std::vector<int64_t> rows = commit(r, prompt);
    for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i] >= 0, r.owns(prompt.positions[i]));
  }
  for (int64_t p = 5; p < 9; ++p) {
    const Step decode{{p, p - 2}, {0, 1}, {10, 20}};
    for (auto& r : t) commit(r, decode);
  }
  for (int64_t r = 0; r < cp; ++r) {
    EXPECT_EQ(t[r].held_positions(10), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8}));
    EXPECT_EQ(t[r].held_positions(20), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(t[r].free_blocks(), t[0].free_blocks());
    EXPECT_EQ(t[r].free_blocks()[r], t[r].num_free_blocks());  // the global view matches the free list
    std::vector<int64_t> mine;
    for (int64_t p = 0; p <= 8; ++p) {
      if ((p / tpb) % cp == r) mine.push_back(p);
    }
    EXPECT_EQ(t[r].positions(10), mine);
  }
  // Rank 0 owns 0, 1, 6, 7 of seq 10 (2 blocks) and 0, 1, 6 of seq 20 (2 blocks); rank 1: 2, 3, 8 / 2, 3.
  EXPECT_EQ(t[0].free_blocks(), (std::vector<int64_t>{4, 5, 6}));
  for (auto& r : t) r.free_sequence(10);
  for (int64_t r = 0; r < cp; ++r) EXPECT_EQ(t[r].free_blocks()[r], t[r].num_free_blocks());
  EXPECT_EQ(t[0].free_blocks(), (std::vector<int64_t>{6, 7, 7}));
}

TEST(BlockTable, ABadStepThrowsTheSameErrorOnEveryRankAndChangesNothing) {
  const int64_t tpb = 2, cp = 2;
  auto t = ranks(3, tpb, cp);
  for (auto& r : t) {
    r.add_sequence(1);
    r.add_sequence(2);
    commit(r, range(1, 0, 5));  // rank 0 holds 0, 1, 4 (2 blocks); rank 1 holds 2, 3 (1 block)
  }
  const std::vector<std::pair<std::string, Step>> bad = {
      {"ArgumentError: argument 'seq_ids'[1] = 9 is not a sequence of the engine (add_sequence first)",
       {{5, 0}, {0, 1}, {1, 9}}},
      {"ArgumentError: argument 'seq_ids'[1] = 1 repeats seq_ids[0]", {{5, 6}, {0, 1}, {1, 1}}},
      {"ArgumentError: argument 'q_seq_index'[1] = 2 is outside [0, 2)", {{5, 0}, {0, 2}, {1, 2}}},
      {"ArgumentError: argument 'positions'[0] = -1 is negative", {{-1}, {0}, {2}}},
      {"ArgumentError: argument 'positions'[2] = 6 repeats positions[0] for sequence 2 in one step",
       {{6, 0, 6}, {0, 0, 0}, {2}}},
      // Position 3 belongs to CP rank 1: rank 0 refuses it too, from its global view.
      {"ArgumentError: argument 'positions'[1] = 3 is already held for sequence 1", {{0, 3}, {0, 1}, {2, 1}}},
      // Sequence 2's positions 0-5 need 2 blocks on rank 0 (which has 1 free) and 1 on rank 1 (2 free).
      {"KVCacheFullError: KV cache full: the step needs 2 more block(s) on CP rank 0 of 2, which has only 1 of 3 "
       "free (neither held nor reserved)",
       range(2, 0, 6)},
      // Positions 2, 3, 6, 7, 10, 11 are all rank 1's: rank 0 refuses the step although it would store none.
      {"KVCacheFullError: KV cache full: the step needs 3 more block(s) on CP rank 1 of 2, which has only 2 of 3 "
       "free (neither held nor reserved)",
       {{2, 3, 6, 7, 10, 11}, {0, 0, 0, 0, 0, 0}, {2}}},
  };
  for (const auto& [expected, step] : bad) {
    for (auto& r : t) {
      const Snapshot before = snapshot(r);
      EXPECT_EQ(error_of([&] { r.plan_step(step.tokens()); }), expected) << "rank " << r.cp_rank();
      EXPECT_EQ(snapshot(r), before);
    }
  }
  // The valid step after them succeeds everywhere.
  for (auto& r : t) EXPECT_EQ(error_of([&] { commit(r, range(2, 0, 2)); }), "");
}

TEST(BlockTable, UndoRestoresEverythingIncludingTheFreeListOrder) {
  BlockTable t(6, 2);
  t.add_sequence(1);
  commit(t, range(1, 0, 3));
  const Snapshot before = snapshot(t);
  const Step step = range(1, 3, 8);
  StepPlan plan = t.plan_step(step.tokens());
  const std::vector<int64_t> rows = t.commit_step(plan);
  EXPECT_EQ(rows, (std::vector<int64_t>{3, 4, 5, 6, 7}));
  EXPECT_THROW(t.commit_step(plan), Error);  // committed already
  t.undo_step(plan);
  EXPECT_EQ(snapshot(t), before);
  t.undo_step(plan);  // a second undo does nothing
  EXPECT_EQ(snapshot(t), before);
  EXPECT_EQ(commit(t, step), rows);  // the same blocks again
  // A plan made before the table changed is refused.
  StepPlan stale = t.plan_step(range(1, 8, 9).tokens());
  t.add_sequence(2);
  EXPECT_THROW(t.commit_step(stale), Error);
}

TEST(BlockTable, ReservationsHoldBlocksForTheirSequence) {
  const int64_t tpb = 2, cp = 2;
  auto t = ranks(4, tpb, cp);
  for (auto& r : t) {
    EXPECT_TRUE(r.can_admit(12));  // 6 blocks: 3 per rank
    r.add_sequence(1, 12);
    EXPECT_EQ(r.unreserved_blocks(), (std::vector<int64_t>{1, 1}));
    EXPECT_EQ(r.free_blocks(), (std::vector<int64_t>{4, 4}));
    EXPECT_FALSE(r.can_admit(5));  // 3 blocks: 2 on rank 0
    EXPECT_TRUE(r.can_admit(4));
    EXPECT_EQ(
        error_of([&] { r.add_sequence(2, 5); }),
        "KVCacheFullError: KV cache full: reserving 5 token(s) for sequence 2 takes 2 block(s) on CP rank 0 of 2, "
        "which has only 1 of 4 free (neither held nor reserved)");
    r.add_sequence(2);
    // Sequence 2 may not take sequence 1's reserved blocks...
    EXPECT_EQ(error_of([&] { r.plan_step(range(2, 0, 5).tokens()); }).substr(0, 16), "KVCacheFullError");
    // ...while sequence 1 grows into its reservation at no extra charge.
    commit(r, range(1, 0, 12));
    EXPECT_EQ(r.unreserved_blocks(), (std::vector<int64_t>{1, 1}));
    EXPECT_EQ(r.free_blocks(), (std::vector<int64_t>{1, 1}));
    // Beyond its reservation it is charged what it holds.
    EXPECT_EQ(error_of([&] { commit(r, range(1, 12, 18)); }).substr(0, 16), "KVCacheFullError");
    commit(r, range(1, 12, 14));
    EXPECT_EQ(r.unreserved_blocks(), (std::vector<int64_t>{0, 1}));
    r.free_sequence(1);
    EXPECT_EQ(r.unreserved_blocks(), (std::vector<int64_t>{4, 4}));
    EXPECT_EQ(r.num_free_blocks(), 4);
  }
  EXPECT_THROW(t[0].add_sequence(3, -1), ArgumentError);
}

TEST(BlockTable, SlotsMapToPoolRowsThroughTheView) {
  BlockTable t(4, 3, 1, 2);  // rank 1 owns 3-5, 9-11, ...
  t.add_sequence(0);
  const Step step{{9, 3, 4, 10, 0}, {0, 0, 0, 0, 0}, {0}};
  const std::vector<int64_t> rows = commit(t, step);
  // Owned positions fill slots 0-3 in step order: block 0 rows 0-2, then block 1 row 0.
  EXPECT_EQ(rows, (std::vector<int64_t>{0, 1, 2, 3, -1}));
  EXPECT_EQ(t.positions(0), (std::vector<int64_t>{9, 3, 4, 10}));
  const SequenceView v = t.view(0);
  for (int64_t k = 0; k < v.num_tokens; ++k) EXPECT_EQ(v.pool_row(k), rows[k]);
  EXPECT_EQ(t.num_held(0), 5);
  std::vector<int64_t> unused = t.unused_rows();
  EXPECT_EQ(unused.size(), 12u - 4u);
}

// A verify chunk that crosses block and owner boundaries, then truncated: every rank ends as if it had only
// ever committed the kept positions (same slots, blocks, counts), and can grow again from there.
TEST(BlockTable, TruncateKeepsExactlyTheAcceptedPositionsOnEveryRank) {
  const int64_t tpb = 2, cp = 3;
  for (int64_t keep = 5; keep <= 9; ++keep) {
    auto t = ranks(6, tpb, cp), expect = ranks(6, tpb, cp);
    for (int64_t r = 0; r < cp; ++r) {
      t[r].add_sequence(1, 4);
      t[r].add_sequence(2);
      commit(t[r], range(2, 0, 3));
      commit(t[r], range(1, 0, 5));
      commit(t[r], range(1, 5, 9));  // positions 5-8: three blocks, three owners
      t[r].truncate(1, keep);
      expect[r].add_sequence(1, 4);
      expect[r].add_sequence(2);
      commit(expect[r], range(2, 0, 3));
      commit(expect[r], range(1, 0, keep));
    }
    for (int64_t r = 0; r < cp; ++r) {
      EXPECT_EQ(snapshot(t[r]), snapshot(expect[r])) << "keep " << keep << " rank " << r;
      EXPECT_EQ(t[r].free_blocks()[r], t[r].num_free_blocks());
      EXPECT_EQ(t[r].unused_rows().size(), expect[r].unused_rows().size());
      EXPECT_EQ(commit(t[r], range(1, keep, 11)), commit(expect[r], range(1, keep, 11)));
    }
  }
}

TEST(BlockTable, TruncateKeepsReservationsAndFreesEverythingAtZero) {
  auto t = ranks(4, 2, 2);
  for (auto& r : t) {
    r.add_sequence(1, 8);  // 2 blocks reserved on each rank
    commit(r, range(1, 0, 7));
    const std::vector<int64_t> unreserved = r.unreserved_blocks();
    r.truncate(1, 3);  // rank 0 keeps 0, 1; rank 1 keeps 2 in a partly filled block
    EXPECT_EQ(r.held_positions(1), (std::vector<int64_t>{0, 1, 2}));
    EXPECT_EQ(r.free_blocks(), (std::vector<int64_t>{3, 3}));
    EXPECT_EQ(r.unreserved_blocks(), unreserved);
    EXPECT_EQ(r.unused_rows().size(), r.cp_rank() == 0 ? 6u : 7u);  // the partly filled block's tail is unused
    r.truncate(1, 0);
    EXPECT_EQ(r.num_held(1), 0);
    EXPECT_EQ(r.num_free_blocks(), 4);
    EXPECT_EQ(r.unreserved_blocks(), unreserved);
    r.free_sequence(1);
    EXPECT_EQ(r.unreserved_blocks(), (std::vector<int64_t>{4, 4}));
  }
}

TEST(BlockTable, TruncateRefusesBadArgumentsAndChangesNothing) {
  BlockTable t(4, 3, 1, 2);
  t.add_sequence(0);
  commit(t, Step{{9, 3, 4, 10, 0}, {0, 0, 0, 0, 0}, {0}});  // rank 1's slots hold 9, 3, 4, 10: out of order
  const Snapshot before = snapshot(t);
  EXPECT_EQ(error_of([&] { t.truncate(7, 0); }), "ArgumentError: unknown sequence 7");
  EXPECT_EQ(error_of([&] { t.truncate(0, -1); }),
            "ArgumentError: argument 'num_tokens' must be in [0, 5] (the positions sequence 0 holds), got -1");
  EXPECT_EQ(error_of([&] { t.truncate(0, 6); }),
            "ArgumentError: argument 'num_tokens' must be in [0, 5] (the positions sequence 0 holds), got 6");
  EXPECT_EQ(error_of([&] { t.truncate(0, 5); }),
            "ArgumentError: truncate: sequence 0 holds positions below 5 after ones at or above it (not appended in "
            "order)");
  EXPECT_EQ(snapshot(t), before);
}

TEST(BlockTable, UndoOfAStepBeforeATruncateDoesNothing) {
  BlockTable t(4, 2);
  t.add_sequence(1);
  StepPlan plan = t.plan_step(range(1, 0, 5).tokens());
  t.commit_step(plan);
  t.truncate(1, 3);
  const Snapshot truncated = snapshot(t);
  t.undo_step(plan);
  EXPECT_EQ(snapshot(t), truncated);
}
