// The KV bookkeeping of one engine on one rank: which global positions every sequence holds, the slots and
// blocks this rank owns, its free list, the block usage and reservations of every CP rank. It knows nothing
// of storage: the rows live in one pool per layer (helix/kv_pool.hpp on the host, device buffers in the
// CUDA engine), addressed by SequenceView::pool_row.
//
// Helix ownership (DESIGN.md §4): the token at global position p belongs to CP rank
// (p / tokens_per_block) % cp_size, which packs the positions it owns densely into its own blocks in the
// order they arrive: slot k of a sequence is row k % tokens_per_block of block blocks[k / tokens_per_block].
// So CP rank r holds ceil(n_r / tokens_per_block) blocks for a sequence of which it owns n_r positions,
// and every rank, keeping every sequence's global positions, knows every CP rank's block usage. That is what
// makes a step all or nothing on every rank: plan_step checks a whole step (ids, repeated and held positions,
// capacity on every CP rank) against this global view, so every rank raises the same error with the same
// message or none does; commit_step then only allocates (bad_alloc is the one failure left, and it changes
// nothing), and undo_step takes a committed step back when a later stage of the step fails.
//
// Reservations (for the scheduler): add_sequence may reserve the blocks of a whole request on every CP
// rank; a sequence is charged max(held, reserved) blocks per CP rank, and no step or admission may make the
// charges exceed num_blocks. Not thread-safe.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

namespace helix {

// What a kernel needs to read one sequence's keys from a pool of [num_blocks * tokens_per_block] rows.
struct SequenceView {
  const int32_t* block_table;  // [ceil(num_tokens / tokens_per_block)] block indices into the pool
  const int64_t* positions;    // [num_tokens] global position of each slot
  int64_t num_tokens;          // slots in use (the last block may be partly filled)
  int64_t tokens_per_block;

  // The pool row of slot k in [0, num_tokens): the paged layout, spelled out once for the host.
  int64_t pool_row(int64_t k) const {
    return int64_t{block_table[k / tokens_per_block]} * tokens_per_block + k % tokens_per_block;
  }
};

// A batch of sequences as the paged attention kernels read it (PagedMlaAttentionParams).
struct BatchView {
  std::vector<int32_t> block_tables;  // [B, max_blocks] this rank's blocks of each sequence (unused entries 0)
  std::vector<int64_t> num_slots;     // [B] this rank's slots of each sequence
  int64_t max_blocks = 1, max_num_slots = 0;
};

// The tokens of one step, as the engines and helix_attention receive them (host arrays).
struct StepTokens {
  const int64_t* positions = nullptr;    // [T] global position of each token
  const int64_t* q_seq_index = nullptr;  // [T] in [0, B): the sequence of each token
  const int64_t* seq_ids = nullptr;      // [B] distinct sequence ids
  int64_t T = 0, B = 0;
};

// A validated step (BlockTable::plan_step): what commit_step applies and undo_step takes back.
struct StepPlan {
  struct Growth {  // one sequence that gains positions
    int64_t seq_id = 0;
    std::vector<int64_t> owned;                     // step tokens (indices in [0, T)) this rank owns, in slot order
    std::vector<int64_t> owned_positions;           // their global positions
    std::vector<int64_t> added;                     // [cp_size] positions each CP rank gains
    std::vector<std::pair<int64_t, int64_t>> held;  // held positions after the step (swapped in by commit)
    int64_t new_blocks = 0;                         // blocks this rank takes from its free list
  };
  std::vector<Growth> growth;
  int64_t T = 0;
  uint64_t version = 0;  // of the table when planned (commit) or committed (undo)
  bool committed = false;
};

class BlockTable {
 public:
  // Requires 1 <= num_blocks <= 2^31 - 1, tokens_per_block >= 1, cp_size >= 1, 0 <= cp_rank < cp_size.
  BlockTable(int64_t num_blocks, int64_t tokens_per_block, int64_t cp_rank = 0, int64_t cp_size = 1);

  // Registers an empty sequence and reserves, on every CP rank, the blocks positions [0, reserve_tokens)
  // take. ArgumentError if `seq_id` exists or reserve_tokens < 0; KVCacheFullError if a CP rank lacks them.
  void add_sequence(int64_t seq_id, int64_t reserve_tokens = 0);
  // Returns the sequence's blocks and reservation and forgets it (ArgumentError if unknown).
  void free_sequence(int64_t seq_id);
  // Keeps positions [0, num_tokens) of a sequence and drops the rest (the rejected drafts of a speculative
  // step, docs/speculative.md §4): held runs clipped, every CP rank's count recounted, this rank's slots with
  // positions >= num_tokens dropped (the last slots) and its blocks past them freed. Reservations stay.
  // ArgumentError for an unknown sequence, num_tokens outside [0, num_held], or dropped slots that are not
  // this rank's last ones; checked before any change, and nothing allocates after.
  void truncate(int64_t seq_id, int64_t num_tokens);

  // Validates a whole step, changing nothing: every seq_id known and distinct, every q_seq_index in [0, B),
  // positions >= 0, no position twice for one sequence, none already held, and the blocks on every CP rank
  // (ArgumentError or KVCacheFullError; the same message on every rank that holds the same table).
  StepPlan plan_step(const StepTokens& step) const;
  // Applies a plan of this table's current state (Error if the table changed since): allocates this rank's
  // slots and returns new_rows [T], the pool row of every token this rank owns and -1 for the others. Only
  // bad_alloc can escape, and then nothing changed.
  std::vector<int64_t> commit_step(StepPlan& plan);
  // Takes back the step committed last (for a step that failed after its commit); does nothing when the
  // table changed since.
  void undo_step(StepPlan& plan) noexcept;

  bool has_sequence(int64_t seq_id) const;
  std::vector<int64_t> sequence_ids() const;  // sorted
  // The CP rank that owns global position p >= 0: (p / tokens_per_block) % cp_size.
  int64_t owner_rank(int64_t position) const;
  bool owns(int64_t position) const;  // false for p < 0
  // This rank's slots of a sequence (positions in slot order); valid until the table changes.
  SequenceView view(int64_t seq_id) const;
  const std::vector<int64_t>& positions(int64_t seq_id) const;
  // Every global position the sequence holds (all CP ranks), sorted.
  std::vector<int64_t> held_positions(int64_t seq_id) const;
  int64_t num_held(int64_t seq_id) const;

  // Queries for admission, each [cp_size], the same on every rank.
  std::vector<int64_t> blocks_for_tokens(int64_t num_tokens) const;  // for positions [0, num_tokens)
  std::vector<int64_t> free_blocks() const;                          // not holding a token
  std::vector<int64_t> unreserved_blocks() const;                    // neither holding nor reserved
  // Whether a sequence reserving num_tokens positions fits now (add_sequence would succeed).
  bool can_admit(int64_t num_tokens) const;

  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_.size()); }  // this rank
  int64_t tokens_per_block() const { return tokens_per_block_; }
  int64_t cp_rank() const { return cp_rank_; }
  int64_t cp_size() const { return cp_size_; }
  // This rank's blocks and slots of seq_ids [B] (each known), for the paged attention kernels.
  BatchView batch_view(const int64_t* seq_ids, int64_t B) const;
  // Pool rows of this rank that hold no token (free blocks and the tail of partly filled ones).
  std::vector<int64_t> unused_rows() const;
  // [num_blocks * tokens_per_block] the global position of the token each pool row holds (set by commit_step;
  // rows that hold no token have stale values): what the paged attention kernels read (kv_pos).
  const int64_t* row_positions() const { return row_pos_.data(); }

 private:
  struct Sequence {
    std::vector<int32_t> blocks;                    // this rank's blocks, in slot order
    std::vector<int64_t> positions;                 // [slots] global position of each of this rank's slots
    std::vector<std::pair<int64_t, int64_t>> held;  // every held position: sorted disjoint runs [begin, end)
    std::vector<int64_t> tokens;                    // [cp_size] positions each CP rank holds
    std::vector<int64_t> reserved;                  // [cp_size] blocks reserved on each CP rank
  };
  const Sequence& sequence(int64_t seq_id) const;
  int64_t blocks_of(int64_t tokens) const { return (tokens + tokens_per_block_ - 1) / tokens_per_block_; }
  // Blocks a sequence is charged on CP rank r: max(held, reserved).
  int64_t charge(const Sequence& s, int64_t r, int64_t extra_tokens = 0) const;
  // Adds (sign +1) or removes (-1) a sequence's blocks and charges in the per-rank totals.
  void account(const Sequence& s, int64_t sign);
  void check_capacity(const StepPlan& plan) const;  // KVCacheFullError naming the first CP rank short

  int64_t num_blocks_, tokens_per_block_, cp_rank_, cp_size_;
  std::vector<int32_t> free_;     // this rank's free blocks, a stack (reserved for every block: never reallocates)
  std::vector<int64_t> used_;     // [cp_size] blocks holding tokens on each CP rank
  std::vector<int64_t> charged_;  // [cp_size] sum over sequences of charge()
  std::vector<int64_t> row_pos_;  // [num_blocks * tokens_per_block] position of each pool row's token
  std::unordered_map<int64_t, Sequence> seqs_;
  uint64_t version_ = 0;  // bumped by every change
};

}  // namespace helix
