// Bindings of the KV hand-off (helix/kv_transfer.hpp): read a sequence's rows, import rows (CPU or GPU engine).
#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include "arrays.hpp"
#include "helix/engine.hpp"
#include "helix/kv_transfer.hpp"

namespace nb = nanobind;

namespace helix::bind {

namespace {

// (positions [n] int64 ascending, rows [num_layers, n, D] in the KV dtype): this rank's rows of seq_id.
nb::tuple kv_read_rows_py(Engine& e, int64_t seq_id) {
  const std::vector<int64_t> pos = kv_owned_positions(e.kv_table(), seq_id);
  const EngineConfig& c = e.config();
  const auto n = static_cast<int64_t>(pos.size());
  HostArray rows = new_array({c.num_layers, n, c.kv_lora_rank + c.qk_rope_head_dim}, c.kv_dtype);
  {
    nb::gil_scoped_release release;
    kv_read_rows(e, seq_id, rows.view);
  }
  return nb::make_tuple(int64_array(pos.data(), n), rows.owner);
}

void kv_import_rows_py(Engine& e, int64_t seq_id, int64_t num_positions, nb::handle rows) {
  HostArray a = to_view(rows, "rows");
  nb::gil_scoped_release release;
  kv_import_rows(e, seq_id, num_positions, a.view);
}

}  // namespace

void bind_kv_transfer(nb::module_& m) {
  m.def("kv_read_rows", &kv_read_rows_py, nb::arg("engine"), nb::arg("seq_id"),
        "This rank's KV rows of a sequence: (positions [n] int64 ascending, rows [num_layers, n, D]) in the\n"
        "KV storage dtype, D = kv_lora_rank + qk_rope_head_dim.");
  m.def("kv_import_rows", &kv_import_rows_py, nb::arg("engine"), nb::arg("seq_id"), nb::arg("num_positions"),
        nb::arg("rows"),
        "Imports positions [0, num_positions) into an empty sequence as one step: rows [num_layers, n, D]\n"
        "are this rank's positions of that range (the block rule), ascending. Collective in its arguments.");
  m.def(
      "kv_pool_addresses",
      [](Engine& e) {
        HELIX_CHECK_ARG(e.backend().device() == Device::Cpu,
                        "kv_pool_addresses: the engine's KV pools are in GPU memory (host pools only)");
        std::vector<uintptr_t> out;
        for (int64_t l = 0; l < e.config().num_layers; ++l) {
          out.push_back(reinterpret_cast<uintptr_t>(e.backend().kv_pool(l)));
        }
        return out;
      },
      nb::arg("engine"),
      "The host address of every layer's KV pool [num_kv_blocks * tokens_per_block, D] (for registration with\n"
      "a transfer engine, which then reads rows in place); valid while the engine lives.");
  m.def("kv_owned_count", &kv_owned_count, nb::arg("num_positions"), nb::arg("tokens_per_block"), nb::arg("cp_rank"),
        nb::arg("cp_size"), "How many of positions [0, num_positions) CP rank cp_rank owns.");
}

}  // namespace helix::bind
