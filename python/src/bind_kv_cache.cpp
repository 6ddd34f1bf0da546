// helix._core.PagedKVCache: a thin binding of helix::PagedKVCache (cpp/include/helix/kv_cache.hpp).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>

#include "arrays.hpp"
#include "helix/kv_cache.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

nb::object block_list(const BlockTable& table, int64_t seq_id);  // bind_block_table.cpp

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
  check_tensor(r.view, "rows", 2, {cache.pool().dtype()});
  check_dim(r.view, "rows", 0, pos.view.dim(0), "len(positions)");
  check_dim(r.view, "rows", 1, cache.pool().head_dim(), "the cache's head_dim");
  cache.append(seq_id, pos.view.ptr<const int64_t>(), pos.view.dim(0), r.view.data);
}

// [num_tokens, head_dim] copy of the stored rows, in slot order.
nb::object read(const PagedKVCache& cache, int64_t seq_id) {
  const SequenceView v = cache.table().view(seq_id);
  const KVPool& pool = cache.pool();
  HostArray out = new_array({v.num_tokens, pool.head_dim()}, pool.dtype());
  auto* dst = static_cast<unsigned char*>(out.view.data);
  for (int64_t k = 0; k < v.num_tokens; ++k) {
    std::memcpy(dst + k * pool.row_bytes(), pool.row(v.pool_row(k)), static_cast<size_t>(pool.row_bytes()));
  }
  return out.owner;
}

// [num_blocks, tokens_per_block, head_dim] copy of the whole pool, used slots or not.
nb::object read_pool(const PagedKVCache& cache) {
  const BlockTable& t = cache.table();
  HostArray out = new_array({t.num_blocks(), t.tokens_per_block(), cache.pool().head_dim()}, cache.pool().dtype());
  std::memcpy(out.view.data, cache.pool().data(), static_cast<size_t>(out.view.nbytes()));
  return out.owner;
}

// A read-only NumPy view of `count` values at `data` with `shape`, kept alive by the cache object `owner`.
template <class T>
nb::object cache_memory(const T* data, std::initializer_list<size_t> shape, nb::handle owner) {
  return nb::cast(nb::ndarray<nb::numpy, const T>(data, shape.size(), shape.begin(), owner));
}

// The arrays paged_mla_attention takes for a batch of sequences of this cache: (pool [num_blocks,
// tokens_per_block, head_dim], block_tables [B, max_blocks] i32, kv_pos [num_blocks, tokens_per_block] i64,
// num_slots [B] i64). pool and kv_pos are read-only views of the cache's memory (no copy: benchmarks time
// calls on them), valid while the cache lives.
nb::tuple paged_view(const PagedKVCache& cache, nb::handle seq_ids) {
  HostArray ids = to_view(seq_ids, "seq_ids");
  check_tensor(ids.view, "seq_ids", 1, {DType::Int64});
  const BlockTable& t = cache.table();
  const int64_t B = ids.view.dim(0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t id = ids.view.ptr<const int64_t>()[b];
    HELIX_CHECK_ARG(t.has_sequence(id), "argument 'seq_ids': sequence ", id, " (seq_ids[", b, "]) is not in the cache");
  }
  const BatchView batch = t.batch_view(ids.view.ptr<const int64_t>(), B);
  HostArray tables = new_array({B, batch.max_blocks}, DType::Int32);
  std::memcpy(tables.view.data, batch.block_tables.data(), batch.block_tables.size() * sizeof(int32_t));
  const nb::handle owner = nb::find(&cache);
  const auto nblocks = static_cast<size_t>(t.num_blocks()), tpb = static_cast<size_t>(t.tokens_per_block()),
             D = static_cast<size_t>(cache.pool().head_dim());
  nb::object pool;
  if (cache.pool().dtype() == DType::Float32) {
    pool = cache_memory(static_cast<const float*>(cache.pool().data()), {nblocks, tpb, D}, owner);
  } else {  // bfloat16 storage crosses as uint16, viewed as ml_dtypes.bfloat16
    pool = cache_memory(static_cast<const uint16_t*>(cache.pool().data()), {nblocks, tpb, D}, owner)
               .attr("view")(nb::module_::import_("ml_dtypes").attr("bfloat16"));
  }
  return nb::make_tuple(pool, tables.owner, cache_memory(t.row_positions(), {nblocks, tpb}, owner),
                        int64_array(batch.num_slots.data(), static_cast<int64_t>(batch.num_slots.size())));
}

std::string repr(const PagedKVCache& c) {
  const BlockTable& t = c.table();
  return detail::concat("PagedKVCache(num_blocks=", t.num_blocks(), ", tokens_per_block=", t.tokens_per_block(),
                        ", head_dim=", c.pool().head_dim(), ", dtype='", dtype_name(c.pool().dtype()),
                        "', cp_rank=", t.cp_rank(), ", cp_size=", t.cp_size(), ", sequences=", t.sequence_ids().size(),
                        ", free_blocks=", t.num_free_blocks(), ")");
}

// A method of the cache that is its table's.
template <class R, class... A>
auto of_table(R (BlockTable::*f)(A...) const) {
  return [f](const PagedKVCache& c, A... a) { return (c.table().*f)(a...); };
}

}  // namespace

void bind_kv_cache(nb::module_& m) {
  nb::class_<PagedKVCache>(m, "PagedKVCache",
                           "One layer's paged KV cache of one rank: a BlockTable (.table) and a pool of\n"
                           "[num_blocks, tokens_per_block, head_dim] rows. With (cp_rank, cp_size) it accepts only\n"
                           "positions p with (p // tokens_per_block) % cp_size == cp_rank. Every failed call\n"
                           "raises (ArgumentError, KVCacheFullError) and leaves the cache unchanged.")
      .def(
          "__init__",
          [](PagedKVCache* self, int64_t num_blocks, int64_t tokens_per_block, int64_t head_dim, nb::handle dtype,
             int64_t cp_rank, int64_t cp_size) {
            new (self) PagedKVCache(num_blocks, tokens_per_block, head_dim, parse_cache_dtype(dtype), cp_rank, cp_size);
          },
          "num_blocks"_a, "tokens_per_block"_a, "head_dim"_a, "dtype"_a = "float32", "cp_rank"_a = 0, "cp_size"_a = 1)
      .def(
          "add_sequence", [](PagedKVCache& c, int64_t seq_id) { c.table().add_sequence(seq_id); }, "seq_id"_a,
          "Register an empty sequence.")
      .def("append", &append, "seq_id"_a, "positions"_a, "rows"_a,
           "Append rows [n, head_dim] (cache dtype) at global positions int64 [n], all owned by this rank.")
      .def(
          "free_sequence", [](PagedKVCache& c, int64_t seq_id) { c.table().free_sequence(seq_id); }, "seq_id"_a,
          "Return the sequence's blocks to the free list and forget it.")
      .def("has_sequence", of_table(&BlockTable::has_sequence), "seq_id"_a)
      .def("__contains__", of_table(&BlockTable::has_sequence), "seq_id"_a)
      .def("owns", of_table(&BlockTable::owns), "position"_a,
           "True when global position `position` belongs to this rank.")
      .def("owner_rank", of_table(&BlockTable::owner_rank), "position"_a,
           "The CP rank owning global position `position` (>= 0).")
      .def(
          "positions",
          [](const PagedKVCache& c, int64_t seq_id) {
            const std::vector<int64_t>& held = c.table().positions(seq_id);
            return int64_array(held.data(), static_cast<int64_t>(held.size()));
          },
          "seq_id"_a, "Global positions held for the sequence, in slot order (int64).")
      .def("sequence_ids", of_table(&BlockTable::sequence_ids), "Ids of the registered sequences, sorted.")
      .def("read", &read, "seq_id"_a, "Copy of the stored rows [num_tokens, head_dim] in slot order.")
      .def(
          "block_table", [](const PagedKVCache& c, int64_t seq_id) { return block_list(c.table(), seq_id); },
          "seq_id"_a, "Copy of the sequence's block table (int32, pool block indices).")
      .def("paged_view", &paged_view, "seq_ids"_a,
           "(pool, block_tables, kv_pos, num_slots): the arrays paged_mla_attention reads for the sequences\n"
           "seq_ids [B] int64: pool [num_blocks, tokens_per_block, head_dim] and kv_pos [num_blocks,\n"
           "tokens_per_block] int64 (read-only views of the cache, valid while it lives), block_tables\n"
           "[B, max_blocks] int32 and num_slots [B] int64 (copies).")
      .def("read_pool", &read_pool,
           "Copy of the whole pool [num_blocks, tokens_per_block, head_dim], used slots or not (debugging).")
      .def("poison_unused", &PagedKVCache::poison_unused, "value"_a = std::numeric_limits<float>::quiet_NaN(),
           "Write `value` into every slot holding no token (test aid: kernels must never read them).")
      .def_prop_ro(
          "table", [](PagedKVCache& c) -> BlockTable& { return c.table(); }, nb::rv_policy::reference_internal,
          "The cache's BlockTable (bookkeeping: positions, blocks, free lists of every CP rank).")
      .def_prop_ro("num_blocks", of_table(&BlockTable::num_blocks))
      .def_prop_ro("num_free_blocks", of_table(&BlockTable::num_free_blocks))
      .def_prop_ro("tokens_per_block", of_table(&BlockTable::tokens_per_block))
      .def_prop_ro("head_dim", [](const PagedKVCache& c) { return c.pool().head_dim(); })
      .def_prop_ro("dtype", [](const PagedKVCache& c) { return std::string(dtype_name(c.pool().dtype())); })
      .def_prop_ro("cp_rank", of_table(&BlockTable::cp_rank))
      .def_prop_ro("cp_size", of_table(&BlockTable::cp_size))
      .def("__repr__", &repr);
}

}  // namespace helix::bind
