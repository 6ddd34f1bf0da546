// The paged KV cache: see helix/kv_cache.hpp. Every mutating call validates all of its arguments
// before touching any state, so a failed call leaves the cache exactly as it was.
#include "helix/kv_cache.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "helix/error.hpp"

namespace helix {

namespace {

constexpr size_t kPoolAlignment = 64;  // one cache line: SIMD kernels may use aligned loads per row

}  // namespace

void PagedKVCache::FreeDeleter::operator()(unsigned char* p) const { std::free(p); }

PagedKVCache::PagedKVCache(int64_t num_blocks, int64_t tokens_per_block, int64_t head_dim, DType dtype, int64_t cp_rank,
                           int64_t cp_size)
    : num_blocks_(num_blocks),
      tokens_per_block_(tokens_per_block),
      head_dim_(head_dim),
      dtype_(dtype),
      cp_rank_(cp_rank),
      cp_size_(cp_size) {
  HELIX_CHECK_ARG(num_blocks >= 1 && num_blocks <= std::numeric_limits<int32_t>::max(),
                  "argument 'num_blocks' must be in [1, 2^31 - 1], got ", num_blocks);
  HELIX_CHECK_ARG(tokens_per_block >= 1, "argument 'tokens_per_block' must be >= 1, got ", tokens_per_block);
  HELIX_CHECK_ARG(head_dim >= 1, "argument 'head_dim' must be >= 1, got ", head_dim);
  HELIX_CHECK_ARG(dtype == DType::Float32 || dtype == DType::BFloat16,
                  "argument 'dtype' must be float32 or bfloat16, got ", dtype_name(dtype));
  HELIX_CHECK_ARG(cp_size >= 1, "argument 'cp_size' must be >= 1, got ", cp_size);
  HELIX_CHECK_ARG(cp_rank >= 0 && cp_rank < cp_size, "argument 'cp_rank' must be in [0, cp_size = ", cp_size, "), got ",
                  cp_rank);
  // Pool bytes = num_blocks * tokens_per_block * row_bytes, guarded against int64 overflow.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 2;
  HELIX_CHECK_ARG(
      tokens_per_block <= kMax / head_dim / dtype_size(dtype) && num_blocks <= kMax / (tokens_per_block * row_bytes()),
      "pool of ", num_blocks, " x ", tokens_per_block, " x ", head_dim, " ", dtype_name(dtype), " is too large");
  const int64_t bytes = num_blocks * tokens_per_block * row_bytes();
  const size_t alloc = (static_cast<size_t>(bytes) + kPoolAlignment - 1) / kPoolAlignment * kPoolAlignment;
  pool_.reset(static_cast<unsigned char*>(std::aligned_alloc(kPoolAlignment, alloc)));
  if (!pool_) throw std::bad_alloc();
  std::memset(pool_.get(), 0, alloc);
  // A stack: the lowest block index is handed out first.
  free_.reserve(static_cast<size_t>(num_blocks));
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

const PagedKVCache::Sequence& PagedKVCache::sequence(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  HELIX_CHECK_ARG(it != seqs_.end(), "unknown sequence ", seq_id);
  return it->second;
}

PagedKVCache::Sequence& PagedKVCache::sequence(int64_t seq_id) {
  return const_cast<Sequence&>(std::as_const(*this).sequence(seq_id));
}

void PagedKVCache::add_sequence(int64_t seq_id) {
  HELIX_CHECK_ARG(!seqs_.contains(seq_id), "sequence ", seq_id, " already exists");
  seqs_.emplace(seq_id, Sequence{});
}

void PagedKVCache::free_sequence(int64_t seq_id) {
  Sequence& seq = sequence(seq_id);
  // free_ was reserved for every block, so these pushes never reallocate (never throw).
  for (auto it = seq.blocks.rbegin(); it != seq.blocks.rend(); ++it) free_.push_back(*it);
  seqs_.erase(seq_id);
}

bool PagedKVCache::has_sequence(int64_t seq_id) const { return seqs_.contains(seq_id); }

int64_t PagedKVCache::owner_rank(int64_t position) const {
  HELIX_CHECK_ARG(position >= 0, "position ", position, " is negative");
  return (position / tokens_per_block_) % cp_size_;
}

bool PagedKVCache::owns(int64_t position) const {
  return position >= 0 && (position / tokens_per_block_) % cp_size_ == cp_rank_;
}

int64_t PagedKVCache::blocks_needed(int64_t seq_id, const int64_t* positions, int64_t n) const {
  const Sequence& seq = sequence(seq_id);
  HELIX_CHECK_ARG(n >= 0, "argument 'n' must be >= 0, got ", n);
  HELIX_CHECK_ARG(n == 0 || positions != nullptr, "argument 'positions' has no data");
  int64_t owned = 0;
  for (int64_t i = 0; i < n; ++i) {
    HELIX_CHECK_ARG(positions[i] >= 0, "argument 'positions': position ", positions[i], " (index ", i, ") is negative");
    owned += owns(positions[i]) ? 1 : 0;
  }
  const int64_t tokens = static_cast<int64_t>(seq.positions.size()) + owned;
  const int64_t blocks = (tokens + tokens_per_block_ - 1) / tokens_per_block_;
  return blocks - static_cast<int64_t>(seq.blocks.size());
}

void PagedKVCache::check_append(int64_t seq_id, const Sequence& seq, const int64_t* positions, int64_t n) const {
  HELIX_CHECK_ARG(n >= 0, "argument 'n' must be >= 0, got ", n);
  HELIX_CHECK_ARG(n == 0 || positions != nullptr, "argument 'positions' has no data");
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = positions[i];
    HELIX_CHECK_ARG(p >= 0, "argument 'positions': position ", p, " (index ", i, ") of sequence ", seq_id,
                    " is negative");
    HELIX_CHECK_ARG(owns(p), "argument 'positions': position ", p, " (index ", i, ") of sequence ", seq_id,
                    " belongs to CP rank ", owner_rank(p), ", not to this cache's rank ", cp_rank_, " (cp_size ",
                    cp_size_, ", tokens_per_block ", tokens_per_block_, ")");
    HELIX_CHECK_ARG(!seq.held.contains(p), "argument 'positions': position ", p, " (index ", i,
                    ") is already held for sequence ", seq_id);
  }
  // Duplicates within the call: sort a copy and compare neighbours.
  std::vector<int64_t> sorted(positions, positions + n);
  std::sort(sorted.begin(), sorted.end());
  auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  HELIX_CHECK_ARG(dup == sorted.end(), "argument 'positions': position ", (dup == sorted.end() ? 0 : *dup),
                  " appears more than once in one append to sequence ", seq_id);
}

void PagedKVCache::append(int64_t seq_id, const int64_t* positions, int64_t n, const void* rows) {
  Sequence& seq = sequence(seq_id);
  check_append(seq_id, seq, positions, n);
  HELIX_CHECK_ARG(n == 0 || rows != nullptr, "argument 'rows' has no data");
  const int64_t have_tokens = static_cast<int64_t>(seq.positions.size());
  const int64_t tokens = have_tokens + n;
  const int64_t new_blocks =
      (tokens + tokens_per_block_ - 1) / tokens_per_block_ - static_cast<int64_t>(seq.blocks.size());
  if (new_blocks > num_free_blocks()) {
    throw KVCacheFullError(detail::concat("KV cache full: sequence ", seq_id, " needs ", new_blocks,
                                          " more block(s) for ", n, " token(s), but only ", num_free_blocks(), " of ",
                                          num_blocks_, " block(s) are free"));
  }
  if (n == 0) return;

  // Mutation. The only thing that can still fail is memory allocation (bad_alloc in the containers);
  // the rollback below restores the exact prior state in that case.
  const size_t old_blocks = seq.blocks.size();
  try {
    seq.blocks.reserve(old_blocks + static_cast<size_t>(new_blocks));
    seq.positions.reserve(static_cast<size_t>(tokens));
    seq.held.reserve(static_cast<size_t>(tokens));
    for (int64_t b = 0; b < new_blocks; ++b) {
      seq.blocks.push_back(free_.back());
      free_.pop_back();
    }
    for (int64_t i = 0; i < n; ++i) {
      seq.held.insert(positions[i]);
      seq.positions.push_back(positions[i]);
    }
  } catch (...) {
    for (int64_t i = 0; i < n; ++i) seq.held.erase(positions[i]);
    seq.positions.resize(static_cast<size_t>(have_tokens));
    while (seq.blocks.size() > old_blocks) {
      free_.push_back(seq.blocks.back());
      seq.blocks.pop_back();
    }
    throw;
  }

  // Copy the rows slot by slot; consecutive slots in one block are contiguous, so copy runs per block.
  const int64_t rb = row_bytes();
  const auto* src = static_cast<const unsigned char*>(rows);
  int64_t slot = have_tokens;
  while (slot < tokens) {
    const int64_t block = seq.blocks[static_cast<size_t>(slot / tokens_per_block_)];
    const int64_t row = slot % tokens_per_block_;
    const int64_t count = std::min(tokens_per_block_ - row, tokens - slot);
    std::memcpy(pool_.get() + (block * tokens_per_block_ + row) * rb, src + (slot - have_tokens) * rb,
                static_cast<size_t>(count * rb));
    slot += count;
  }
}

std::vector<int64_t> PagedKVCache::sequence_ids() const {
  std::vector<int64_t> ids;
  ids.reserve(seqs_.size());
  for (const auto& [id, seq] : seqs_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

const std::vector<int64_t>& PagedKVCache::positions(int64_t seq_id) const { return sequence(seq_id).positions; }

SequenceView PagedKVCache::view(int64_t seq_id) const {
  const Sequence& seq = sequence(seq_id);
  return SequenceView{seq.blocks.data(), seq.positions.data(), static_cast<int64_t>(seq.positions.size())};
}

void PagedKVCache::fill_rows(int32_t block, int64_t row_begin, int64_t row_end, float value) {
  unsigned char* base = pool_.get() + (static_cast<int64_t>(block) * tokens_per_block_ + row_begin) * row_bytes();
  const int64_t count = (row_end - row_begin) * head_dim_;
  if (dtype_ == DType::Float32) {
    std::fill_n(reinterpret_cast<float*>(base), count, value);
  } else {
    std::fill_n(reinterpret_cast<bf16_t*>(base), count, float_to_bf16(value));
  }
}

void PagedKVCache::poison_unused(float value) {
  for (int32_t b : free_) fill_rows(b, 0, tokens_per_block_, value);
  for (const auto& [id, seq] : seqs_) {
    const int64_t used = static_cast<int64_t>(seq.positions.size()) % tokens_per_block_;
    if (used != 0) fill_rows(seq.blocks.back(), used, tokens_per_block_, value);
  }
}

}  // namespace helix
