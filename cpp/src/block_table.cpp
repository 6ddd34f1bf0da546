// The block table of one engine: see helix/block_table.hpp. plan_step validates against the global view
// (the same on every rank) and changes nothing; commit_step allocates first and then only moves values;
// undo_step is commit_step backwards.
#include "helix/block_table.hpp"

#include <algorithm>
#include <iterator>
#include <limits>

#include "helix/error.hpp"

namespace helix {

namespace {

using Runs = std::vector<std::pair<int64_t, int64_t>>;  // sorted, disjoint, non-adjacent [begin, end)

// Positions are < 2^62, so p + 1 and sums of counts never overflow.
constexpr int64_t kPositionLimit = int64_t{1} << 62;
constexpr int64_t kMaxCpSize = 1 << 16;

bool runs_contain(const Runs& runs, int64_t p) {
  auto it = std::upper_bound(runs.begin(), runs.end(), p, [](int64_t v, const auto& r) { return v < r.first; });
  return it != runs.begin() && p < std::prev(it)->second;
}

// The union of `runs` and the sorted, distinct positions `sorted`, none of which `runs` contains.
Runs runs_with(const Runs& runs, const std::vector<int64_t>& sorted) {
  Runs added;
  for (int64_t p : sorted) {
    if (!added.empty() && added.back().second == p) {
      added.back().second = p + 1;
    } else {
      added.emplace_back(p, p + 1);
    }
  }
  Runs merged;
  merged.reserve(runs.size() + added.size());
  std::merge(runs.begin(), runs.end(), added.begin(), added.end(), std::back_inserter(merged));
  Runs out;
  out.reserve(merged.size());
  for (const auto& r : merged) {
    if (!out.empty() && out.back().second == r.first) {
      out.back().second = r.second;
    } else {
      out.push_back(r);
    }
  }
  return out;
}

// Capacity for `extra` more elements, growing geometrically (a decode step adds one slot at a time).
template <class V>
void make_room(V& v, size_t extra) {
  if (v.size() + extra > v.capacity()) v.reserve(std::max(v.size() + extra, 2 * v.capacity()));
}

}  // namespace

BlockTable::BlockTable(int64_t num_blocks, int64_t tokens_per_block, int64_t cp_rank, int64_t cp_size)
    : num_blocks_(num_blocks), tokens_per_block_(tokens_per_block), cp_rank_(cp_rank), cp_size_(cp_size) {
  HELIX_CHECK_ARG(num_blocks >= 1 && num_blocks <= std::numeric_limits<int32_t>::max(),
                  "argument 'num_blocks' must be in [1, 2^31 - 1], got ", num_blocks);
  HELIX_CHECK_ARG(tokens_per_block >= 1, "argument 'tokens_per_block' must be >= 1, got ", tokens_per_block);
  HELIX_CHECK_ARG(tokens_per_block <= std::numeric_limits<int64_t>::max() / 4 / num_blocks, "a pool of ", num_blocks,
                  " blocks x ", tokens_per_block, " tokens is too large");
  HELIX_CHECK_ARG(cp_size >= 1 && cp_size <= kMaxCpSize, "argument 'cp_size' must be in [1, ", kMaxCpSize, "], got ",
                  cp_size);
  HELIX_CHECK_ARG(cp_rank >= 0 && cp_rank < cp_size, "argument 'cp_rank' must be in [0, cp_size = ", cp_size, "), got ",
                  cp_rank);
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));  // lowest index first
  used_.assign(static_cast<size_t>(cp_size), 0);
  charged_.assign(static_cast<size_t>(cp_size), 0);
  row_pos_.assign(static_cast<size_t>(num_blocks * tokens_per_block), -1);
}

const BlockTable::Sequence& BlockTable::sequence(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  HELIX_CHECK_ARG(it != seqs_.end(), "unknown sequence ", seq_id);
  return it->second;
}

int64_t BlockTable::charge(const Sequence& s, int64_t r, int64_t extra_tokens) const {
  return std::max(blocks_of(s.tokens[r] + extra_tokens), s.reserved[r]);
}

void BlockTable::account(const Sequence& s, int64_t sign) {
  for (int64_t r = 0; r < cp_size_; ++r) {
    used_[r] += sign * blocks_of(s.tokens[r]);
    charged_[r] += sign * charge(s, r);
  }
}

void BlockTable::add_sequence(int64_t seq_id, int64_t reserve_tokens) {
  HELIX_CHECK_ARG(!seqs_.contains(seq_id), "sequence ", seq_id, " already exists");
  HELIX_CHECK_ARG(reserve_tokens >= 0 && reserve_tokens <= kPositionLimit,
                  "argument 'reserve_tokens' must be in [0, 2^62], got ", reserve_tokens);
  const std::vector<int64_t> need = blocks_for_tokens(reserve_tokens);
  const std::vector<int64_t> room = unreserved_blocks();
  for (int64_t r = 0; r < cp_size_; ++r) {
    if (need[r] > room[r]) {
      throw KVCacheFullError(detail::concat("KV cache full: reserving ", reserve_tokens, " token(s) for sequence ",
                                            seq_id, " takes ", need[r], " block(s) on CP rank ", r, " of ", cp_size_,
                                            ", which has only ", room[r], " of ", num_blocks_,
                                            " free (neither held nor reserved)"));
    }
  }
  Sequence s;
  s.tokens.assign(static_cast<size_t>(cp_size_), 0);
  s.reserved = need;
  const Sequence& added = seqs_.emplace(seq_id, std::move(s)).first->second;
  account(added, +1);
  ++version_;
}

void BlockTable::free_sequence(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  HELIX_CHECK_ARG(it != seqs_.end(), "unknown sequence ", seq_id);
  account(it->second, -1);
  // free_ was reserved for every block, so these pushes never reallocate (never throw).
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) free_.push_back(*b);
  seqs_.erase(it);
  ++version_;
}

void BlockTable::truncate(int64_t seq_id, int64_t num_tokens) {
  auto it = seqs_.find(seq_id);
  HELIX_CHECK_ARG(it != seqs_.end(), "unknown sequence ", seq_id);
  Sequence& s = it->second;
  const int64_t held = num_held(seq_id);
  HELIX_CHECK_ARG(num_tokens >= 0 && num_tokens <= held, "argument 'num_tokens' must be in [0, ", held,
                  "] (the positions sequence ", seq_id, " holds), got ", num_tokens);
  const auto dropped_at = [&](int64_t p) { return p >= num_tokens; };
  const auto first = std::find_if(s.positions.begin(), s.positions.end(), dropped_at);
  HELIX_CHECK_ARG(std::all_of(first, s.positions.end(), dropped_at), "truncate: sequence ", seq_id,
                  " holds positions below ", num_tokens, " after ones at or above it (not appended in order)");
  std::vector<int64_t> dropped(static_cast<size_t>(cp_size_), 0);  // [cp_size] positions each CP rank loses
  Runs kept;
  kept.reserve(s.held.size());
  for (const auto& [begin, end] : s.held) {
    for (int64_t p = std::max(begin, num_tokens); p < end; ++p) dropped[owner_rank(p)] += 1;
    if (begin < num_tokens) kept.emplace_back(begin, std::min(end, num_tokens));
  }
  // From here on nothing allocates or throws.
  account(s, -1);
  s.positions.erase(first, s.positions.end());
  const int64_t keep_blocks = blocks_of(static_cast<int64_t>(s.positions.size()));
  while (static_cast<int64_t>(s.blocks.size()) > keep_blocks) {
    free_.push_back(s.blocks.back());  // reserved for every block: never reallocates
    s.blocks.pop_back();
  }
  s.held.swap(kept);
  for (int64_t r = 0; r < cp_size_; ++r) s.tokens[r] -= dropped[r];
  account(s, +1);
  ++version_;
}

StepPlan BlockTable::plan_step(const StepTokens& step) const {
  const int64_t T = step.T, B = step.B;
  HELIX_CHECK_ARG(T >= 0 && B >= 0, "a step needs T >= 0 tokens of B >= 0 sequences, got T = ", T, ", B = ", B);
  HELIX_CHECK_ARG((T == 0 || (step.positions && step.q_seq_index)) && (B == 0 || step.seq_ids),
                  "arguments 'positions', 'q_seq_index' or 'seq_ids' have no data");
  std::unordered_map<int64_t, int64_t> index_of;  // seq id -> its first index in seq_ids
  for (int64_t b = 0; b < B; ++b) {
    const int64_t id = step.seq_ids[b];
    HELIX_CHECK_ARG(seqs_.contains(id), "argument 'seq_ids'[", b, "] = ", id,
                    " is not a sequence of the engine (add_sequence first)");
    const auto [it, fresh] = index_of.emplace(id, b);
    HELIX_CHECK_ARG(fresh, "argument 'seq_ids'[", b, "] = ", id, " repeats seq_ids[", it->second, "]");
  }
  std::vector<std::vector<int64_t>> tokens(static_cast<size_t>(B));  // step tokens of each sequence, in order
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = step.q_seq_index[t], p = step.positions[t];
    HELIX_CHECK_ARG(b >= 0 && b < B, "argument 'q_seq_index'[", t, "] = ", b, " is outside [0, ", B, ")");
    HELIX_CHECK_ARG(p >= 0, "argument 'positions'[", t, "] = ", p, " is negative");
    HELIX_CHECK_ARG(p < kPositionLimit, "argument 'positions'[", t, "] = ", p, " is not below 2^62");
    tokens[b].push_back(t);
  }
  StepPlan plan;
  plan.T = T;
  plan.version = version_;
  for (int64_t b = 0; b < B; ++b) {
    if (tokens[b].empty()) continue;
    const int64_t id = step.seq_ids[b];
    const Sequence& s = seqs_.at(id);
    std::vector<std::pair<int64_t, int64_t>> by_position;  // (position, token)
    for (int64_t t : tokens[b]) by_position.emplace_back(step.positions[t], t);
    std::sort(by_position.begin(), by_position.end());
    for (size_t i = 0; i < by_position.size(); ++i) {
      const auto [p, t] = by_position[i];
      HELIX_CHECK_ARG(i == 0 || by_position[i - 1].first != p, "argument 'positions'[", t, "] = ", p,
                      " repeats positions[", by_position[i - 1].second, "] for sequence ", id, " in one step");
      HELIX_CHECK_ARG(!runs_contain(s.held, p), "argument 'positions'[", t, "] = ", p, " is already held for sequence ",
                      id);
    }
    StepPlan::Growth g;
    g.seq_id = id;
    g.added.assign(static_cast<size_t>(cp_size_), 0);
    for (int64_t t : tokens[b]) {
      const int64_t r = owner_rank(step.positions[t]);
      g.added[r] += 1;
      if (r == cp_rank_) {
        g.owned.push_back(t);
        g.owned_positions.push_back(step.positions[t]);
      }
    }
    std::vector<int64_t> sorted(by_position.size());
    for (size_t i = 0; i < sorted.size(); ++i) sorted[i] = by_position[i].first;
    g.held = runs_with(s.held, sorted);
    g.new_blocks =
        blocks_of(static_cast<int64_t>(s.positions.size() + g.owned.size())) - static_cast<int64_t>(s.blocks.size());
    plan.growth.push_back(std::move(g));
  }
  check_capacity(plan);
  return plan;
}

void BlockTable::check_capacity(const StepPlan& plan) const {
  for (int64_t r = 0; r < cp_size_; ++r) {
    int64_t more = 0;
    for (const StepPlan::Growth& g : plan.growth) {
      const Sequence& s = seqs_.at(g.seq_id);
      more += charge(s, r, g.added[r]) - charge(s, r);
    }
    const int64_t room = num_blocks_ - charged_[r];
    if (more > room) {
      throw KVCacheFullError(detail::concat("KV cache full: the step needs ", more, " more block(s) on CP rank ", r,
                                            " of ", cp_size_, ", which has only ", room, " of ", num_blocks_,
                                            " free (neither held nor reserved)"));
    }
  }
}

std::vector<int64_t> BlockTable::commit_step(StepPlan& plan) {
  HELIX_CHECK(!plan.committed && plan.version == version_,
              "commit_step: the plan was committed already, or the block table changed since plan_step");
  int64_t new_blocks = 0;
  for (const StepPlan::Growth& g : plan.growth) new_blocks += g.new_blocks;
  HELIX_CHECK(new_blocks <= num_free_blocks(), "block table: ", new_blocks, " blocks planned but ", num_free_blocks(),
              " free (internal error)");
  // Every allocation first: a bad_alloc here leaves the table as it was.
  std::vector<int64_t> rows(static_cast<size_t>(plan.T), -1);
  for (const StepPlan::Growth& g : plan.growth) {
    Sequence& s = seqs_.at(g.seq_id);
    make_room(s.blocks, static_cast<size_t>(g.new_blocks));
    make_room(s.positions, g.owned.size());
  }
  // From here on nothing allocates or throws.
  for (StepPlan::Growth& g : plan.growth) {
    Sequence& s = seqs_.find(g.seq_id)->second;
    account(s, -1);
    for (int64_t i = 0; i < g.new_blocks; ++i) {
      s.blocks.push_back(free_.back());
      free_.pop_back();
    }
    const auto first = static_cast<int64_t>(s.positions.size());
    s.positions.insert(s.positions.end(), g.owned_positions.begin(), g.owned_positions.end());
    s.held.swap(g.held);
    for (int64_t r = 0; r < cp_size_; ++r) s.tokens[r] += g.added[r];
    account(s, +1);
    const SequenceView v = view(g.seq_id);
    for (size_t i = 0; i < g.owned.size(); ++i) {
      const int64_t row = v.pool_row(first + static_cast<int64_t>(i));
      rows[g.owned[i]] = row;
      row_pos_[row] = g.owned_positions[i];
    }
  }
  plan.committed = true;
  plan.version = ++version_;
  return rows;
}

void BlockTable::undo_step(StepPlan& plan) noexcept {
  if (!plan.committed || plan.version != version_) return;
  for (auto g = plan.growth.rbegin(); g != plan.growth.rend(); ++g) {
    Sequence& s = seqs_.find(g->seq_id)->second;
    account(s, -1);
    s.positions.resize(s.positions.size() - g->owned.size());
    for (int64_t i = 0; i < g->new_blocks; ++i) {
      free_.push_back(s.blocks.back());  // reserved for every block: never reallocates
      s.blocks.pop_back();
    }
    s.held.swap(g->held);
    for (int64_t r = 0; r < cp_size_; ++r) s.tokens[r] -= g->added[r];
    account(s, +1);
  }
  plan.committed = false;
  plan.version = ++version_;
}

bool BlockTable::has_sequence(int64_t seq_id) const { return seqs_.contains(seq_id); }

std::vector<int64_t> BlockTable::sequence_ids() const {
  std::vector<int64_t> ids;
  ids.reserve(seqs_.size());
  for (const auto& [id, s] : seqs_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

int64_t BlockTable::owner_rank(int64_t position) const {
  HELIX_CHECK_ARG(position >= 0, "position ", position, " is negative");
  return (position / tokens_per_block_) % cp_size_;
}

bool BlockTable::owns(int64_t position) const {
  return position >= 0 && (position / tokens_per_block_) % cp_size_ == cp_rank_;
}

SequenceView BlockTable::view(int64_t seq_id) const {
  const Sequence& s = sequence(seq_id);
  return SequenceView{s.blocks.data(), s.positions.data(), static_cast<int64_t>(s.positions.size()), tokens_per_block_};
}

const std::vector<int64_t>& BlockTable::positions(int64_t seq_id) const { return sequence(seq_id).positions; }

std::vector<int64_t> BlockTable::held_positions(int64_t seq_id) const {
  std::vector<int64_t> out;
  for (const auto& [begin, end] : sequence(seq_id).held) {
    for (int64_t p = begin; p < end; ++p) out.push_back(p);
  }
  return out;
}

int64_t BlockTable::num_held(int64_t seq_id) const {
  int64_t n = 0;
  for (const auto& [begin, end] : sequence(seq_id).held) n += end - begin;
  return n;
}

std::vector<int64_t> BlockTable::blocks_for_tokens(int64_t num_tokens) const {
  HELIX_CHECK_ARG(num_tokens >= 0 && num_tokens <= kPositionLimit, "argument 'num_tokens' must be in [0, 2^62], got ",
                  num_tokens);
  const int64_t blocks = blocks_of(num_tokens);  // blocks 0, 1, ... of positions [0, num_tokens), dealt round-robin
  std::vector<int64_t> out(static_cast<size_t>(cp_size_));
  for (int64_t r = 0; r < cp_size_; ++r) out[r] = blocks / cp_size_ + (r < blocks % cp_size_ ? 1 : 0);
  return out;
}

std::vector<int64_t> BlockTable::free_blocks() const {
  std::vector<int64_t> out(used_.size());
  for (size_t r = 0; r < out.size(); ++r) out[r] = num_blocks_ - used_[r];
  return out;
}

std::vector<int64_t> BlockTable::unreserved_blocks() const {
  std::vector<int64_t> out(charged_.size());
  for (size_t r = 0; r < out.size(); ++r) out[r] = num_blocks_ - charged_[r];
  return out;
}

bool BlockTable::can_admit(int64_t num_tokens) const {
  const std::vector<int64_t> need = blocks_for_tokens(num_tokens), room = unreserved_blocks();
  for (int64_t r = 0; r < cp_size_; ++r) {
    if (need[r] > room[r]) return false;
  }
  return true;
}

BatchView BlockTable::batch_view(const int64_t* seq_ids, int64_t B) const {
  BatchView out;
  out.num_slots.resize(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    out.num_slots[b] = view(seq_ids[b]).num_tokens;
    out.max_num_slots = std::max(out.max_num_slots, out.num_slots[b]);
  }
  out.max_blocks = std::max<int64_t>(blocks_of(out.max_num_slots), 1);
  out.block_tables.assign(static_cast<size_t>(B * out.max_blocks), 0);
  for (int64_t b = 0; b < B; ++b) {
    const SequenceView v = view(seq_ids[b]);
    std::copy_n(v.block_table, blocks_of(v.num_tokens), out.block_tables.data() + b * out.max_blocks);
  }
  return out;
}

std::vector<int64_t> BlockTable::unused_rows() const {
  std::vector<int64_t> rows;
  for (int32_t b : free_) {
    for (int64_t i = 0; i < tokens_per_block_; ++i) rows.push_back(int64_t{b} * tokens_per_block_ + i);
  }
  for (const auto& [id, s] : seqs_) {
    const auto slots = static_cast<int64_t>(s.positions.size());
    if (slots % tokens_per_block_ == 0) continue;
    const SequenceView v = view(id);
    for (int64_t k = slots; k < blocks_of(slots) * tokens_per_block_; ++k) rows.push_back(v.pool_row(k));
  }
  return rows;
}

}  // namespace helix
