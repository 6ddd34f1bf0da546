// helix._core.BlockTable: a thin binding of helix::BlockTable (cpp/include/helix/block_table.hpp), the KV
// bookkeeping of one engine (Engine.block_table) or of one PagedKVCache (.table).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <string>
#include <vector>

#include "arrays.hpp"
#include "helix/block_table.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

namespace {

nb::object int64_array(const std::vector<int64_t>& v) {
  return bind::int64_array(v.data(), static_cast<int64_t>(v.size()));
}

// The arrays of one step: positions [T], seq_ids [B], q_seq_index [T], all int64.
struct StepArrays {
  HostArray positions, seq_ids, q_seq_index;
  StepTokens tokens() const {
    return StepTokens{positions.view.ptr<int64_t>(), q_seq_index.view.ptr<int64_t>(), seq_ids.view.ptr<int64_t>(),
                      positions.view.dim(0), seq_ids.view.dim(0)};
  }
};

StepArrays step_arrays(nb::handle positions, nb::handle seq_ids, nb::handle q_seq_index) {
  StepArrays a{to_view(positions, "positions"), to_view(seq_ids, "seq_ids"), to_view(q_seq_index, "q_seq_index")};
  check_tensor(a.positions.view, "positions", 1, {DType::Int64});
  check_tensor(a.seq_ids.view, "seq_ids", 1, {DType::Int64});
  check_tensor(a.q_seq_index.view, "q_seq_index", 1, {DType::Int64});
  check_dim(a.q_seq_index.view, "q_seq_index", 0, a.positions.view.dim(0), "len(positions)");
  return a;
}

std::string repr(const BlockTable& t) {
  return detail::concat("BlockTable(num_blocks=", t.num_blocks(), ", tokens_per_block=", t.tokens_per_block(),
                        ", cp_rank=", t.cp_rank(), ", cp_size=", t.cp_size(), ", sequences=", t.sequence_ids().size(),
                        ", free_blocks=", t.num_free_blocks(), ")");
}

}  // namespace

nb::object block_list(const BlockTable& table, int64_t seq_id) {
  const SequenceView v = table.view(seq_id);
  return int32_array(v.block_table, (v.num_tokens + v.tokens_per_block - 1) / v.tokens_per_block);
}

void bind_block_table(nb::module_& m) {
  nb::class_<BlockTable>(m, "BlockTable",
                         "The KV bookkeeping of one rank: every sequence's global positions (all CP ranks), the\n"
                         "slots and blocks this rank owns, its free list, and every CP rank's block usage and\n"
                         "reservations. A step is checked as a whole (plan_step) before anything changes.")
      .def(nb::init<int64_t, int64_t, int64_t, int64_t>(), "num_blocks"_a, "tokens_per_block"_a, "cp_rank"_a = 0,
           "cp_size"_a = 1)
      .def("add_sequence", &BlockTable::add_sequence, "seq_id"_a, "reserve_tokens"_a = 0,
           "Register an empty sequence, reserving the blocks of positions [0, reserve_tokens) on every CP rank.")
      .def("free_sequence", &BlockTable::free_sequence, "seq_id"_a, "Return its blocks and reservation.")
      .def("truncate", &BlockTable::truncate, "seq_id"_a, "num_tokens"_a,
           "Keep positions [0, num_tokens) of the sequence, free this rank's blocks past them.")
      .def("has_sequence", &BlockTable::has_sequence, "seq_id"_a)
      .def("__contains__", &BlockTable::has_sequence, "seq_id"_a)
      .def("sequence_ids", &BlockTable::sequence_ids, "Ids of the registered sequences, sorted.")
      .def("owns", &BlockTable::owns, "position"_a)
      .def("owner_rank", &BlockTable::owner_rank, "position"_a)
      .def(
          "positions", [](const BlockTable& t, int64_t seq_id) { return int64_array(t.positions(seq_id)); }, "seq_id"_a,
          "Global positions of this rank's slots of the sequence, in slot order (int64).")
      .def("block_table", &block_list, "seq_id"_a, "This rank's blocks of the sequence, in slot order (int32).")
      .def(
          "held_positions", [](const BlockTable& t, int64_t seq_id) { return int64_array(t.held_positions(seq_id)); },
          "seq_id"_a, "Every global position the sequence holds on any CP rank, sorted (int64).")
      .def(
          "plan_step",
          [](const BlockTable& t, nb::handle positions, nb::handle seq_ids, nb::handle q_seq_index) {
            t.plan_step(step_arrays(positions, seq_ids, q_seq_index).tokens());
          },
          "positions"_a, "seq_ids"_a, "q_seq_index"_a,
          "Check a step (positions [T], seq_ids [B], q_seq_index [T]) as the engines do; changes nothing.")
      .def(
          "commit_step",
          [](BlockTable& t, nb::handle positions, nb::handle seq_ids, nb::handle q_seq_index) {
            StepPlan plan = t.plan_step(step_arrays(positions, seq_ids, q_seq_index).tokens());
            return int64_array(t.commit_step(plan));
          },
          "positions"_a, "seq_ids"_a, "q_seq_index"_a,
          "plan_step, then allocate the slots: returns the pool row of every token this rank owns, -1 elsewhere.")
      .def("blocks_for_tokens", &BlockTable::blocks_for_tokens, "num_tokens"_a,
           "Blocks each CP rank holds for positions [0, num_tokens).")
      .def("can_admit", &BlockTable::can_admit, "num_tokens"_a,
           "Whether add_sequence(..., reserve_tokens=num_tokens) would succeed now.")
      .def_prop_ro("free_blocks", &BlockTable::free_blocks, "Blocks holding no token, per CP rank.")
      .def_prop_ro("unreserved_blocks", &BlockTable::unreserved_blocks,
                   "Blocks neither holding a token nor reserved, per CP rank.")
      .def_prop_ro("num_blocks", &BlockTable::num_blocks)
      .def_prop_ro("num_free_blocks", &BlockTable::num_free_blocks, "This rank's free blocks.")
      .def_prop_ro("tokens_per_block", &BlockTable::tokens_per_block)
      .def_prop_ro("cp_rank", &BlockTable::cp_rank)
      .def_prop_ro("cp_size", &BlockTable::cp_size)
      .def("__repr__", &repr);
}

}  // namespace helix::bind
