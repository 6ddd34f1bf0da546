// helix._core.PagedKVCache: a thin binding of helix::PagedKVCache (cpp/include/helix/kv_cache.hpp).
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "arrays.hpp"
#include "helix/kv_cache.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

namespace {

// "float32" / "bfloat16", or anything numpy.dtype() understands (numpy.float32, ml_dtypes.bfloat16).
DType parse_cache_dtype(nb::handle obj) {
  std::string name;
  if (nb::isinstance<nb::str>(obj)) {
    name = nb::cast<std::string>(obj);
  } else {
    try {
      name = nb::cast<std::string>(nb::module_::import_("numpy").attr("dtype")(obj).attr("name"));
    } catch (const nb::python_error&) {
      name = nb::cast<std::string>(nb::repr(obj));
    }
  }
  if (name == "float32") return DType::Float32;
  if (name == "bfloat16") return DType::BFloat16;
  throw ArgumentError(detail::concat("argument 'dtype' must be 'float32' or 'bfloat16', got ", name));
}

// positions: int64 [n]
HostArray positions_view(nb::handle positions) {
  HostArray pos = to_view(positions, "positions");
  check_tensor(pos.view, "positions", 1, {DType::Int64});
  return pos;
}

void append(PagedKVCache& cache, int64_t seq_id, nb::handle positions, nb::handle rows) {
  HostArray pos = positions_view(positions);
  HostArray r = to_view(rows, "rows");
  check_tensor(r.view, "rows", 2, {cache.dtype()});
  check_dim(r.view, "rows", 0, pos.view.dim(0), "len(positions)");
  check_dim(r.view, "rows", 1, cache.head_dim(), "the cache's head_dim");
  cache.append(seq_id, pos.view.ptr<const int64_t>(), pos.view.dim(0), r.view.data);
}

int64_t blocks_needed(const PagedKVCache& cache, int64_t seq_id, nb::handle positions) {
  HostArray pos = positions_view(positions);
  return cache.blocks_needed(seq_id, pos.view.ptr<const int64_t>(), pos.view.dim(0));
}

nb::object positions(const PagedKVCache& cache, int64_t seq_id) {
  const std::vector<int64_t>& held = cache.positions(seq_id);
  HostArray out = new_array({static_cast<int64_t>(held.size())}, DType::Int64);
  if (!held.empty()) std::memcpy(out.view.data, held.data(), held.size() * sizeof(int64_t));
  return out.owner;
}

// [num_tokens, head_dim] copy of the stored rows, in slot order.
nb::object read(const PagedKVCache& cache, int64_t seq_id) {
  const SequenceView v = cache.view(seq_id);
  HostArray out = new_array({v.num_tokens, cache.head_dim()}, cache.dtype());
  const int64_t rb = cache.row_bytes(), tpb = cache.tokens_per_block();
  const auto* pool = static_cast<const unsigned char*>(cache.pool());
  auto* dst = static_cast<unsigned char*>(out.view.data);
  for (int64_t k = 0; k < v.num_tokens; ++k) {
    const int64_t block = v.block_table[k / tpb];
    std::memcpy(dst + k * rb, pool + (block * tpb + k % tpb) * rb, static_cast<size_t>(rb));
  }
  return out.owner;
}

// int32 [ceil(num_tokens / tokens_per_block)] copy of the sequence's block table.
nb::object block_table(const PagedKVCache& cache, int64_t seq_id) {
  const SequenceView v = cache.view(seq_id);
  const int64_t n = (v.num_tokens + cache.tokens_per_block() - 1) / cache.tokens_per_block();
  HostArray out = new_array({n}, DType::Int32);
  if (n > 0) std::memcpy(out.view.data, v.block_table, static_cast<size_t>(n) * sizeof(int32_t));
  return out.owner;
}

// [num_blocks, tokens_per_block, head_dim] copy of the whole pool, used slots or not.
nb::object read_pool(const PagedKVCache& cache) {
  HostArray out = new_array({cache.num_blocks(), cache.tokens_per_block(), cache.head_dim()}, cache.dtype());
  std::memcpy(out.view.data, cache.pool(), static_cast<size_t>(out.view.nbytes()));
  return out.owner;
}

std::string repr(const PagedKVCache& c) {
  return detail::concat("PagedKVCache(num_blocks=", c.num_blocks(), ", tokens_per_block=", c.tokens_per_block(),
                        ", head_dim=", c.head_dim(), ", dtype='", dtype_name(c.dtype()), "', cp_rank=", c.cp_rank(),
                        ", cp_size=", c.cp_size(), ", sequences=", c.sequence_ids().size(),
                        ", free_blocks=", c.num_free_blocks(), ")");
}

}  // namespace

void bind_kv_cache(nb::module_& m) {
  nb::class_<PagedKVCache>(m, "PagedKVCache",
                           "Paged KV cache of one rank: a pool of [num_blocks, tokens_per_block, head_dim] rows,\n"
                           "a free list and per-sequence block tables. With (cp_rank, cp_size) it accepts only\n"
                           "positions p with (p // tokens_per_block) % cp_size == cp_rank. Every failed call\n"
                           "raises (ArgumentError, KVCacheFullError) and leaves the cache unchanged.")
      .def(
          "__init__",
          [](PagedKVCache* self, int64_t num_blocks, int64_t tokens_per_block, int64_t head_dim, nb::handle dtype,
             int64_t cp_rank, int64_t cp_size) {
            new (self) PagedKVCache(num_blocks, tokens_per_block, head_dim, parse_cache_dtype(dtype), cp_rank, cp_size);
          },
          "num_blocks"_a, "tokens_per_block"_a, "head_dim"_a, "dtype"_a = "float32", "cp_rank"_a = 0, "cp_size"_a = 1)
      .def("add_sequence", &PagedKVCache::add_sequence, "seq_id"_a, "Register an empty sequence.")
      .def("append", &append, "seq_id"_a, "positions"_a, "rows"_a,
           "Append rows [n, head_dim] (cache dtype) at global positions int64 [n], all owned by this rank.")
      .def("free_sequence", &PagedKVCache::free_sequence, "seq_id"_a,
           "Return the sequence's blocks to the free list and forget it.")
      .def("has_sequence", &PagedKVCache::has_sequence, "seq_id"_a)
      .def("__contains__", &PagedKVCache::has_sequence, "seq_id"_a)
      .def("owns", &PagedKVCache::owns, "position"_a, "True when global position `position` belongs to this rank.")
      .def("owner_rank", &PagedKVCache::owner_rank, "position"_a,
           "The CP rank owning global position `position` (>= 0).")
      .def("blocks_needed", &blocks_needed, "seq_id"_a, "positions"_a,
           "Blocks needed beyond those held to append the owned ones of `positions` (int64 [n]).")
      .def("positions", &positions, "seq_id"_a, "Global positions held for the sequence, in slot order (int64).")
      .def("sequence_ids", &PagedKVCache::sequence_ids, "Ids of the registered sequences, sorted.")
      .def("read", &read, "seq_id"_a, "Copy of the stored rows [num_tokens, head_dim] in slot order.")
      .def("block_table", &block_table, "seq_id"_a, "Copy of the sequence's block table (int32, pool block indices).")
      .def("read_pool", &read_pool,
           "Copy of the whole pool [num_blocks, tokens_per_block, head_dim], used slots or not (debugging).")
      .def("poison_unused", &PagedKVCache::poison_unused, "value"_a = std::numeric_limits<float>::quiet_NaN(),
           "Write `value` into every slot holding no token (test aid: kernels must never read them).")
      .def_prop_ro("num_blocks", &PagedKVCache::num_blocks)
      .def_prop_ro("num_free_blocks", &PagedKVCache::num_free_blocks)
      .def_prop_ro("tokens_per_block", &PagedKVCache::tokens_per_block)
      .def_prop_ro("head_dim", &PagedKVCache::head_dim)
      .def_prop_ro("dtype", [](const PagedKVCache& c) { return std::string(dtype_name(c.dtype())); })
      .def_prop_ro("cp_rank", &PagedKVCache::cp_rank)
      .def_prop_ro("cp_size", &PagedKVCache::cp_size)
      .def("__repr__", &repr);
}

}  // namespace helix::bind
