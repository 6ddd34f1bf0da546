// The one engine (contract: helix/engine.hpp): validation of every step at the boundary, the block table, the
// weights' checks; the step itself is run_decoder on the backend.
#include "helix/engine.hpp"

#include <numeric>

#include "decoder.hpp"

namespace helix {

namespace {

const EngineConfig& validated(const EngineConfig& c) {
  validate_engine_config(c);
  return c;
}

std::unique_ptr<Backend> make_backend(const EngineConfig& c, Communicator& world, const EngineDevice& device) {
  check_engine_world(c, world);
  if (device.kind == Device::Cpu) return make_cpu_backend(c, world);
  return cuda::make_cuda_backend(c, world, device.cuda_device, device.comm);
}

StepTokens step_tokens(const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index) {
  return StepTokens{positions.ptr<int64_t>(), q_seq_index.ptr<int64_t>(), seq_ids.ptr<int64_t>(), positions.dim(0),
                    seq_ids.dim(0)};
}

}  // namespace

Engine::Engine(const EngineConfig& config, Communicator& world, const EngineDevice& device)
    : config_(validated(config)),
      device_(device),
      table_(config_.num_kv_blocks, config_.tokens_per_block, config_.cp_rank(), config_.cp),
      expected_(helix::expected_weight_shapes(config_)),
      backend_(make_backend(config_, world, device)) {
  if (config_.num_mtp_layers > 0) {
    mtp_table_.emplace(config_.num_kv_blocks, config_.tokens_per_block, config_.cp_rank(), config_.cp);
  }
}

Engine::~Engine() = default;

std::vector<std::string> Engine::expected_weights() const {
  std::vector<std::string> names;
  for (const auto& [n, e] : expected_) names.push_back(n);
  return names;
}

void Engine::set_weight(const std::string& name, const TensorView& w) {
  check_engine_weight(expected_, name, w);
  weights_[name] = backend_->store_weight(name, w);
}

void Engine::check_weights() const {
  for (const auto& [n, e] : expected_) {
    HELIX_CHECK(weights_.count(n), "weight '", n, "' was never set on rank ", config_.rank);
  }
}

void Engine::add_sequence(int64_t seq_id, int64_t reserve_tokens) {
  table_.add_sequence(seq_id, reserve_tokens);
  if (!mtp_table_) return;
  try {  // the same reservation in the MTP layer's table, or in neither
    mtp_table_->add_sequence(seq_id, reserve_tokens);
  } catch (...) {
    table_.free_sequence(seq_id);
    throw;
  }
}

void Engine::free_sequence(int64_t seq_id) {
  table_.free_sequence(seq_id);
  if (mtp_table_) mtp_table_->free_sequence(seq_id);
}

void Engine::truncate(int64_t seq_id, int64_t num_tokens) { table_.truncate(seq_id, num_tokens); }

const BlockTable& Engine::mtp_block_table() const {
  HELIX_CHECK_ARG(mtp_table_.has_value(), "the engine has no MTP layer (num_mtp_layers = 0)");
  return *mtp_table_;
}

void Engine::truncate_mtp(int64_t seq_id, int64_t num_tokens) {
  mtp_block_table();  // ArgumentError without an MTP layer
  mtp_table_->truncate(seq_id, num_tokens);
}

int64_t Engine::memory_bytes() const { return backend_->memory_bytes(); }

void Engine::step(const TensorView& tokens, const TensorView& positions, const TensorView& seq_ids,
                  const TensorView& q_seq_index, const TensorView& logit_rows, const TensorView& logits,
                  const TensorView& hidden_rows, const TensorView& hidden) {
  check_weights();
  StepPlan plan = check_step_inputs(config_, table_, tokens, positions, seq_ids, q_seq_index, logit_rows, logits,
                                    hidden_rows, hidden);
  const std::vector<int64_t> new_rows = table_.commit_step(plan);  // [T] pool row of each owned token, else -1
  try {
    const StepTokens step = step_tokens(positions, seq_ids, q_seq_index);
    const BatchView batch = table_.batch_view(step.seq_ids, step.B);
    const bool want_hidden = hidden_rows.ndim() == 1;
    const StepInput in{.tokens = tokens.ptr<int64_t>(),
                       .step = step,
                       .new_rows = new_rows.data(),
                       .logit_rows = logit_rows.ptr<int64_t>(),
                       .L = logit_rows.dim(0),
                       .hidden_rows = want_hidden ? hidden_rows.ptr<int64_t>() : nullptr,
                       .H = want_hidden ? hidden_rows.dim(0) : 0,
                       .batch = &batch,
                       .table = &table_};
    run_decoder(*backend_, config_, weights_, in, logits.ptr<float>(), hidden.ptr<float>(), timings_);
  } catch (...) {
    // A later failure (non-finite values, device or communication errors) takes the slots back: the step
    // leaves no trace.
    table_.undo_step(plan);
    throw;
  }
  timings_.steps += 1;
}

void Engine::mtp_step(const TensorView& hidden, const TensorView& next_tokens, const TensorView& positions,
                      const TensorView& seq_ids, const TensorView& q_seq_index, const TensorView& logit_rows,
                      const TensorView& g, const TensorView& logits) {
  mtp_block_table();  // ArgumentError without an MTP layer
  check_weights();
  BlockTable& table = *mtp_table_;
  StepPlan plan = check_step_inputs(config_, table, next_tokens, positions, seq_ids, q_seq_index, logit_rows, logits,
                                    {}, {}, "next_tokens");
  check_tensor(hidden, "hidden", 2, {DType::Float32});
  check_dim(hidden, "hidden", 0, next_tokens.dim(0), "the number of tokens");
  check_dim(hidden, "hidden", 1, config_.hidden_size, "hidden_size");
  check_tensor(g, "g", 2, {DType::Float32});
  check_dim(g, "g", 0, logit_rows.dim(0), "len(logit_rows)");
  check_dim(g, "g", 1, config_.hidden_size, "hidden_size");
  const std::vector<int64_t> new_rows = table.commit_step(plan);  // [T] MTP pool row of each owned token, else -1
  try {
    const StepTokens step = step_tokens(positions, seq_ids, q_seq_index);
    const BatchView batch = table.batch_view(step.seq_ids, step.B);
    const StepInput in{.tokens = next_tokens.ptr<int64_t>(),
                       .step = step,
                       .new_rows = new_rows.data(),
                       .logit_rows = logit_rows.ptr<int64_t>(),
                       .L = logit_rows.dim(0),
                       .batch = &batch,
                       .table = &table,
                       .mtp = true};
    run_mtp(*backend_, config_, weights_, in, hidden.ptr<float>(), g.ptr<float>(), logits.ptr<float>(), timings_);
  } catch (...) {
    table.undo_step(plan);
    throw;
  }
}

void Engine::fill_sequence_random(int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale) {
  fill_random(table_, false, seq_id, num_tokens, seed, scale);
}

void Engine::fill_mtp_sequence_random(int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale) {
  mtp_block_table();  // ArgumentError without an MTP layer
  fill_random(*mtp_table_, true, seq_id, num_tokens, seed, scale);
}

void Engine::fill_random(BlockTable& table, bool mtp, int64_t seq_id, int64_t num_tokens, uint64_t seed, float scale) {
  const char* name = mtp ? "fill_mtp_sequence_random" : "fill_sequence_random";
  HELIX_CHECK_ARG(table.has_sequence(seq_id), "unknown sequence ", seq_id);
  HELIX_CHECK_ARG(table.num_held(seq_id) == 0, name, ": sequence ", seq_id, " is not empty");
  HELIX_CHECK_ARG(num_tokens >= 0, "argument 'num_tokens' must be >= 0, got ", num_tokens);
  std::vector<int64_t> positions(static_cast<size_t>(num_tokens));
  std::iota(positions.begin(), positions.end(), int64_t{0});
  const std::vector<int64_t> one_sequence(positions.size(), 0);  // q_seq_index
  StepPlan plan = table.plan_step(StepTokens{positions.data(), one_sequence.data(), &seq_id, num_tokens, 1});
  const std::vector<int64_t> new_rows = table.commit_step(plan);
  try {
    std::vector<int64_t> rows, owned;  // the pool rows this rank fills and their positions
    for (int64_t p = 0; p < num_tokens; ++p) {
      if (new_rows[static_cast<size_t>(p)] < 0) continue;
      rows.push_back(new_rows[static_cast<size_t>(p)]);
      owned.push_back(p);
    }
    backend_->fill_kv_random(rows, owned, seed, scale, mtp);
  } catch (...) {
    table.undo_step(plan);
    throw;
  }
}

StepPlan check_step_inputs(const EngineConfig& c, const BlockTable& table, const TensorView& tokens,
                           const TensorView& positions, const TensorView& seq_ids, const TensorView& q_seq_index,
                           const TensorView& logit_rows, const TensorView& logits, const TensorView& hidden_rows,
                           const TensorView& hidden, const char* tokens_name) {
  check_tensor(tokens, tokens_name, 1, {DType::Int64});
  const int64_t T = tokens.dim(0);
  HELIX_CHECK_ARG(T > 0, "argument '", tokens_name, "' is empty");
  check_tensor(positions, "positions", 1, {DType::Int64});
  check_dim(positions, "positions", 0, T, "the number of tokens");
  check_tensor(seq_ids, "seq_ids", 1, {DType::Int64});
  check_tensor(q_seq_index, "q_seq_index", 1, {DType::Int64});
  check_dim(q_seq_index, "q_seq_index", 0, T, "the number of tokens");
  check_tensor(logit_rows, "logit_rows", 1, {DType::Int64});
  const int64_t L = logit_rows.dim(0);
  for (int64_t i = 0; i < L; ++i) {
    const int64_t r = logit_rows.ptr<int64_t>()[i];
    HELIX_CHECK_ARG(r >= 0 && r < T, "argument 'logit_rows'[", i, "] = ", r, " is outside [0, ", T, ")");
  }
  check_tensor(logits, "logits", 2, {DType::Float32});
  check_dim(logits, "logits", 0, L, "len(logit_rows)");
  check_dim(logits, "logits", 1, c.vocab_size, "vocab_size");
  if (hidden_rows.ndim() > 0) {
    check_tensor(hidden_rows, "hidden_rows", 1, {DType::Int64});
    const int64_t H = hidden_rows.dim(0);
    for (int64_t i = 0; i < H; ++i) {
      const int64_t r = hidden_rows.ptr<int64_t>()[i];
      HELIX_CHECK_ARG(r >= 0 && r < T, "argument 'hidden_rows'[", i, "] = ", r, " is outside [0, ", T, ")");
    }
    check_tensor(hidden, "hidden", 2, {DType::Float32});
    check_dim(hidden, "hidden", 0, H, "len(hidden_rows)");
    check_dim(hidden, "hidden", 1, c.hidden_size, "hidden_size");
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t id = tokens.ptr<int64_t>()[t];
    HELIX_CHECK_ARG(id >= 0 && id < c.vocab_size, "argument '", tokens_name, "'[", t, "] = ", id,
                    " is outside the vocabulary [0, ", c.vocab_size, ")");
  }
  return table.plan_step(step_tokens(positions, seq_ids, q_seq_index));
}

}  // namespace helix
