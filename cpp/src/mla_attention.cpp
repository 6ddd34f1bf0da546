// MLA partial attention on the CPU: the driver (work split, online softmax over key tiles, merge of the
// per-thread partials) and the contiguous and paged entry points. The tile arithmetic lives in
// mla_attention_{amx,avx512,portable}.cpp.
//
// Work split: query rows (t, h) are flattened and cut into blocks of kRowBlock rows; when there are fewer
// blocks than threads the keys of each block are split into `nsplit` contiguous ranges as well
// (flash-decoding). Each work item keeps its own (OT, running max, running sum) and the items of one block
// are merged exactly at the end (log-sum-exp merge in the log2 domain).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "helix/ops/attention.hpp"
#include "mla_attention_tiles.hpp"

namespace helix {
namespace {

using detail::kRowBlock;
using detail::OLayout;
using detail::TileOps;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kMaxSplit = 64;  // key splits per row block

std::atomic<MlaKernelPath> g_forced_path{MlaKernelPath::Auto};

// Only float32-grade paths (see MlaKernelPath): the bf16-rounded ones run only when forced.
MlaKernelPath auto_path() {
  static const MlaKernelPath path = [] {
    // bfloat16 keys only (select_ops keeps float32 keys on the exact widened-f32 FMA kernels).
    if (detail::amx_tile_ops(true)) return MlaKernelPath::AmxSplit;
    if (detail::avx512_tile_ops()) return MlaKernelPath::Avx512;
    return MlaKernelPath::Portable;
  }();
  return path;
}

const TileOps& select_ops(DType kv_dtype) {
  MlaKernelPath path = g_forced_path.load();
  if (path == MlaKernelPath::Auto) path = auto_path();
  if (kv_dtype == DType::BFloat16) {
    switch (path) {
      case MlaKernelPath::Amx:
        return *detail::amx_tile_ops(false);
      case MlaKernelPath::AmxSplit:
        return *detail::amx_tile_ops(true);
      case MlaKernelPath::Avx512Bf16:
        return *detail::avx512_bf16_tile_ops(false);
      case MlaKernelPath::Avx512Bf16Split:
        return *detail::avx512_bf16_tile_ops(true);
      default:
        break;
    }
  }
  if (path != MlaKernelPath::Portable) return *detail::avx512_tile_ops();
  return detail::portable_tile_ops(kv_dtype);
}

// bfloat16 -> float32 rows [nt][D] (exact); the loop vectorizes for the baseline ISA.
void widen_tile(const void* const* keys, int64_t nt, int64_t D, float* out) {
  for (int64_t n = 0; n < nt; ++n) {
    const bf16_t* src = static_cast<const bf16_t*>(keys[n]);
    uint32_t* dst = reinterpret_cast<uint32_t*>(out + n * D);
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<uint32_t>(src[d]) << 16;
  }
}

// Where the keys of one call live: a contiguous [S, D] array or a sequence of a paged pool.
struct KeySource {
  const unsigned char* base;   // contiguous: [S, D]; paged: pool [num_blocks * tokens_per_block, D]
  int64_t row_bytes;           // D * dtype size
  const int64_t* pos;          // global position of each row: contiguous [S]; paged [num_blocks * tokens_per_block]
  int64_t S;                   // keys (slots) of the call
  const int32_t* block_table;  // paged: [ceil(S / tokens_per_block)]; nullptr: contiguous
  int64_t tokens_per_block;
  int64_t value_col = 0;  // the values are columns [value_col, value_col + R) of a row (0: the first R)

  // The row of slot s: s itself, or the paged layout (SequenceView::pool_row).
  int64_t row_index(int64_t s) const {
    if (block_table == nullptr) return s;
    return int64_t{block_table[s / tokens_per_block]} * tokens_per_block + s % tokens_per_block;
  }
  const void* row(int64_t s) const { return base + row_index(s) * row_bytes; }
  int64_t position(int64_t s) const { return pos[row_index(s)]; }
};

using detail::AlignedBuffer;

struct Workspace {
  AlignedBuffer qpack, scores, out, state, p_pairs, v_pairs, extra, qpos, wide;
  std::vector<const void*> qrows, keys, next_keys, values;
};

Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// One call of the kernel: which query tokens, which keys, which tile operations.
struct Job {
  const MlaAttentionParams& p;
  const int64_t* tokens;  // [num_tokens] query token indices; nullptr: 0..num_tokens-1
  int64_t num_tokens;
  const KeySource& keys;
  const TileOps& ops;
  DType kv_dtype;
  int64_t nblocks, nsplit, Mp_max;
  int64_t ldo;  // OT [R][Mp]: R; O [Mp][ldo]: detail::o_row_stride(R)
  // nsplit > 1: [nblocks * nsplit][ldo*Mp_max + 2*Mp_max]: OT [R][Mp] or O [Mp][ldo] (ops.o_layout; Mp: the
  // block's own), m_run, l_run
  float* partials;

  int64_t token(int64_t flat_row) const {
    const int64_t i = flat_row / p.H;
    return tokens ? tokens[i] : i;
  }
  // Index of flat row f in the [T, H] outputs.
  int64_t out_row(int64_t f) const { return token(f) * p.H + f % p.H; }
  int64_t rows_in_block(int64_t b) const { return std::min(kRowBlock, num_tokens * p.H - b * kRowBlock); }
  int64_t partial_stride() const { return ldo * Mp_max + 2 * Mp_max; }
  int64_t num_key_tiles() const { return (keys.S + ops.key_tile - 1) / ops.key_tile; }
};

// One partial state of a row block: OT [R][Mp] or O [Mp][ldo], m_run [Mp] (log2 domain), l_run [Mp].
struct Partial {
  const float* OT;
  const float* m_run;
  const float* l_run;
};

// Merges `np` partials of block b for rows [m_begin, m_end) and writes o and lse.
void finalize_rows(const Job& job, int64_t b, const Partial* parts, int64_t np, int64_t Mp, int64_t m_begin,
                   int64_t m_end) {
  constexpr int64_t kChunk = 16;
  const int64_t R = job.p.R;
  float weights[kMaxSplit * kChunk];  // [np][kChunk]: merge weight of each partial, divided by the sum
  for (int64_t m0 = m_begin; m0 < m_end; m0 += kChunk) {
    const int64_t mc = std::min(kChunk, m_end - m0);
    float* o_rows[kChunk];
    for (int64_t i = 0; i < mc; ++i) {
      const int64_t m = m0 + i;
      const int64_t row = job.out_row(b * kRowBlock + m);
      o_rows[i] = job.p.o + row * R;
      float mx = kNegInf;
      for (int64_t k = 0; k < np; ++k) mx = std::max(mx, parts[k].m_run[m]);
      if (mx == kNegInf) {  // nothing visible (or empty shard)
        for (int64_t k = 0; k < np; ++k) weights[k * kChunk + i] = 0.f;
        job.p.lse[row] = kNegInf;
        continue;
      }
      double l = 0.0;
      for (int64_t k = 0; k < np; ++k) {
        const float wk = parts[k].m_run[m] == kNegInf ? 0.f : std::exp2(parts[k].m_run[m] - mx);
        weights[k * kChunk + i] = wk;
        l += static_cast<double>(wk) * parts[k].l_run[m];
      }
      for (int64_t k = 0; k < np; ++k) weights[k * kChunk + i] = static_cast<float>(weights[k * kChunk + i] / l);
      job.p.lse[row] = static_cast<float>((mx + std::log2(l)) * 0.6931471805599453);
    }
    if (job.ops.o_layout == OLayout::RowMajor) {
      for (int64_t i = 0; i < mc; ++i) {
        float* dst = o_rows[i];
        std::fill(dst, dst + R, 0.f);
        for (int64_t k = 0; k < np; ++k) {
          const float w = weights[k * kChunk + i];
          if (w == 0.f) continue;
          const float* src = parts[k].OT + (m0 + i) * job.ldo;
          for (int64_t r = 0; r < R; ++r) dst[r] += src[r] * w;
        }
      }
      continue;
    }
    for (int64_t r = 0; r < R; ++r) {
      float acc[kChunk] = {};
      for (int64_t k = 0; k < np; ++k) {
        const float* ot = parts[k].OT + r * Mp + m0;
        for (int64_t i = 0; i < mc; ++i) acc[i] += ot[i] * weights[k * kChunk + i];
      }
      for (int64_t i = 0; i < mc; ++i) o_rows[i][r] = acc[i];
    }
  }
}

// Work item (block b, key split `split`). Returns false when out of memory.
bool run_item(const Job& job, int64_t b, int64_t split) {
  const MlaAttentionParams& p = job.p;
  const KeySource& src = job.keys;
  const TileOps& ops = job.ops;
  const int64_t M = job.rows_in_block(b);
  const int64_t Mp = round_up(M, 16);
  const int64_t key_tile = ops.key_tile;
  const int64_t ntiles = job.num_key_tiles();
  const int64_t k_begin = std::min(src.S, ntiles * split / job.nsplit * key_tile);
  const int64_t k_end = std::min(src.S, ntiles * (split + 1) / job.nsplit * key_tile);

  Workspace& ws = thread_workspace();
  void* qpack = ws.qpack.get<unsigned char>(ops.qpack_bytes(p.D, Mp));
  float* St = ws.scores.get<float>(key_tile * Mp);
  float* state = ws.state.get<float>(3 * Mp);
  int64_t* qpos = ws.qpos.get<int64_t>(Mp);
  const int64_t extra_bytes = ops.extra_bytes(p.D, p.R, Mp);
  detail::TileScratch scratch{ws.p_pairs.get<uint16_t>(key_tile * Mp), ws.v_pairs.get<uint16_t>(key_tile * p.R),
                              extra_bytes > 0 ? ws.extra.get<unsigned char>(extra_bytes) : nullptr};
  float* OT;
  float *m_run, *l_run;
  if (job.nsplit > 1) {
    float* slot = job.partials + (b * job.nsplit + split) * job.partial_stride();
    OT = slot;
    m_run = slot + job.ldo * job.Mp_max;
    l_run = m_run + job.Mp_max;
  } else {
    OT = ws.out.get<float>(job.ldo * Mp);
    m_run = state + Mp;
    l_run = state + 2 * Mp;
  }
  float* alpha = state;
  const bool widen = job.kv_dtype != ops.key_dtype;              // bf16 keys on float32 micro-kernels
  const int64_t wide_cols = std::max(p.D, src.value_col + p.R);  // the columns qk and pv read
  float* wide = widen ? ws.wide.get<float>(key_tile * wide_cols) : nullptr;
  if (!qpack || !St || !state || !qpos || !scratch.p_pairs || !scratch.v_pairs || !OT || (widen && !wide) ||
      (extra_bytes > 0 && !scratch.extra)) {
    return false;
  }

  // Pack the block's queries; padded rows are zero and see every key.
  const size_t qrow_bytes = static_cast<size_t>(p.D * dtype_size(p.q_dtype));
  ws.qrows.resize(static_cast<size_t>(M));
  int64_t q_min = std::numeric_limits<int64_t>::max(), q_max = std::numeric_limits<int64_t>::min();
  for (int64_t m = 0; m < M; ++m) {
    const int64_t f = b * kRowBlock + m;
    ws.qrows[m] = static_cast<const unsigned char*>(p.q) + job.out_row(f) * qrow_bytes;
    qpos[m] = p.q_pos[job.token(f)];
    q_min = std::min(q_min, qpos[m]);
    q_max = std::max(q_max, qpos[m]);
  }
  ops.pack_q(ws.qrows.data(), M, Mp, p.D, p.q_dtype, qpack);
  std::fill(m_run, m_run + Mp, kNegInf);
  std::fill(l_run, l_run + Mp, 0.f);
  std::fill(OT, OT + job.ldo * Mp, 0.f);

  const float c = p.scale * detail::kLog2e;
  ws.keys.resize(static_cast<size_t>(key_tile));
  ws.next_keys.resize(static_cast<size_t>(key_tile));
  scratch.next_rows = ws.next_keys.data();
  scratch.next_row_bytes = src.row_bytes;
  for (int64_t s0 = k_begin; s0 < k_end; s0 += key_tile) {
    const int64_t nt = std::min(key_tile, k_end - s0);
    int64_t k_min = std::numeric_limits<int64_t>::max(), k_max = std::numeric_limits<int64_t>::min();
    for (int64_t n = 0; n < nt; ++n) {
      const int64_t kp = src.position(s0 + n);
      k_min = std::min(k_min, kp);
      k_max = std::max(k_max, kp);
    }
    if (k_min > q_max) continue;  // no query of this block sees any key of the tile
    for (int64_t n = 0; n < nt; ++n) ws.keys[n] = src.row(s0 + n);
    if (ops.o_layout == OLayout::RowMajor) {  // the AMX kernels prefetch the next tile's keys into L2
      const int64_t next_nt = std::clamp<int64_t>(k_end - s0 - nt, 0, key_tile);
      for (int64_t n = 0; n < next_nt; ++n) ws.next_keys[n] = src.row(s0 + nt + n);
      scratch.next_count = next_nt;
    }
    if (widen) {
      widen_tile(ws.keys.data(), nt, wide_cols, wide);
      for (int64_t n = 0; n < nt; ++n) ws.keys[n] = wide + n * wide_cols;
    }
    ops.qk(qpack, ws.keys.data(), nt, p.D, Mp, St, scratch);
    if (k_max > q_min) {  // causal mask: some (row, key) pairs are invisible
      for (int64_t n = 0; n < nt; ++n) {
        const int64_t kp = src.position(s0 + n);
        if (kp <= q_min) continue;
        float* s = St + n * Mp;
        for (int64_t m = 0; m < M; ++m) {
          if (kp > qpos[m]) s[m] = kNegInf;
        }
      }
    }
    if (ops.softmax(St, nt, Mp, c, m_run, l_run, alpha)) {
      if (ops.o_layout == OLayout::RowMajor) {  // only the rows whose running max moved
        for (int64_t m = 0; m < Mp; ++m) {
          if (alpha[m] == 1.f) continue;
          float* o = OT + m * job.ldo;
          const float a = alpha[m];
          for (int64_t r = 0; r < p.R; ++r) o[r] *= a;
        }
      } else {
        for (int64_t r = 0; r < p.R; ++r) {
          float* o = OT + r * Mp;
          for (int64_t m = 0; m < Mp; ++m) o[m] *= alpha[m];
        }
      }
    }
    const void* const* values = ws.keys.data();
    if (src.value_col != 0) {
      ws.values.resize(static_cast<size_t>(nt));
      const int64_t offset = src.value_col * static_cast<int64_t>(dtype_size(ops.key_dtype));  // bytes
      for (int64_t n = 0; n < nt; ++n) ws.values[n] = static_cast<const unsigned char*>(ws.keys[n]) + offset;
      values = ws.values.data();
    }
    ops.pv(St, values, nt, p.R, Mp, OT, scratch);
  }

  if (job.nsplit == 1) {
    const Partial part{OT, m_run, l_run};
    finalize_rows(job, b, &part, 1, Mp, 0, M);
  }
  return true;
}

AlignedBuffer& caller_partials() {
  thread_local AlignedBuffer buf;
  return buf;
}

void run_attention(const MlaAttentionParams& p, const int64_t* tokens, int64_t num_tokens, const KeySource& src,
                   DType kv_dtype) {
  const int64_t rows = num_tokens * p.H;
  if (rows == 0 || p.R == 0) return;
  const TileOps& ops = select_ops(kv_dtype);
  const int64_t nblocks = (rows + kRowBlock - 1) / kRowBlock;
  const int64_t nthreads = omp_get_max_threads();
  const int64_t ntiles = (src.S + ops.key_tile - 1) / ops.key_tile;
  const int64_t nsplit =
      std::clamp<int64_t>((nthreads + nblocks - 1) / nblocks, 1, std::clamp<int64_t>(ntiles, 1, kMaxSplit));
  const int64_t Mp_max = round_up(std::min(rows, kRowBlock), 16);
  const int64_t ldo = ops.o_layout == OLayout::RowMajor ? detail::o_row_stride(p.R) : p.R;
  Job job{p, tokens, num_tokens, src, ops, kv_dtype, nblocks, nsplit, Mp_max, ldo, nullptr};
  if (nsplit > 1) {
    job.partials = caller_partials().get<float>(nblocks * nsplit * job.partial_stride());
    HELIX_CHECK(job.partials != nullptr, "mla_attention: out of memory for the partial states");
  }

  const int64_t items = nblocks * nsplit;
  std::atomic<bool> ok{true};
#pragma omp parallel for schedule(dynamic, 1) if (items > 1)
  for (int64_t item = 0; item < items; ++item) {
    if (!run_item(job, item / nsplit, item % nsplit)) ok = false;
  }
  HELIX_CHECK(ok.load(), "mla_attention: out of memory for the kernel workspace");
  if (nsplit == 1) return;

  // Exact merge of the key splits, 16-row chunks in parallel.
  const int64_t chunks_per_block = Mp_max / 16;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nblocks * chunks_per_block; ++c) {
    const int64_t b = c / chunks_per_block;
    const int64_t M = job.rows_in_block(b);
    const int64_t m0 = (c % chunks_per_block) * 16;
    if (m0 >= M) continue;
    const int64_t Mp = round_up(M, 16);
    Partial parts[kMaxSplit];
    for (int64_t k = 0; k < nsplit; ++k) {
      const float* slot = job.partials + (b * nsplit + k) * job.partial_stride();
      parts[k] = Partial{slot, slot + job.ldo * Mp_max, slot + job.ldo * Mp_max + Mp_max};
    }
    finalize_rows(job, b, parts, nsplit, Mp, m0, std::min(M, m0 + 16));
  }
}

}  // namespace

std::string_view mla_kernel_path_unavailable(MlaKernelPath path) {
  switch (path) {
    case MlaKernelPath::Auto:
    case MlaKernelPath::Portable:
      return {};
    case MlaKernelPath::Avx512:
      return detail::avx512_tile_ops() ? std::string_view{} : "no AVX-512F on this CPU (or build)";
    case MlaKernelPath::Avx512Bf16:
    case MlaKernelPath::Avx512Bf16Split:
      return detail::avx512_bf16_tile_ops(false) ? std::string_view{} : "no AVX512_BF16 on this CPU (or build)";
    case MlaKernelPath::Amx:
    case MlaKernelPath::AmxSplit:
      return detail::amx_unavailable();
  }
  return "unknown kernel path";
}

void set_mla_kernel_path(MlaKernelPath path) {
  const std::string_view why = mla_kernel_path_unavailable(path);
  HELIX_CHECK(why.empty(), "cannot force the ", mla_kernel_path_name(path), " kernel path: ", why);
  g_forced_path.store(path);
}

void set_cpu_threads(int n) {
  HELIX_CHECK_ARG(n >= 1, "argument 'n' (threads) must be >= 1, got ", n);
  omp_set_num_threads(n);
}

int cpu_threads() { return omp_get_max_threads(); }

MlaKernelPath mla_kernel_path() {
  const MlaKernelPath forced = g_forced_path.load();
  return forced != MlaKernelPath::Auto ? forced : auto_path();
}

std::string_view mla_kernel_path_name(MlaKernelPath path) {
  switch (path) {
    case MlaKernelPath::Auto:
      return "auto";
    case MlaKernelPath::Portable:
      return "portable";
    case MlaKernelPath::Avx512:
      return "avx512";
    case MlaKernelPath::Avx512Bf16:
      return "avx512_bf16";
    case MlaKernelPath::Avx512Bf16Split:
      return "avx512_bf16_split";
    case MlaKernelPath::Amx:
      return "amx";
    case MlaKernelPath::AmxSplit:
      return "amx_split";
  }
  return "?";
}

void mla_attention_cpu(const MlaAttentionParams& p, const void* kv, const int64_t* kv_pos, int64_t S, DType kv_dtype) {
  const KeySource src{static_cast<const unsigned char*>(kv), p.D * dtype_size(kv_dtype), kv_pos, S, nullptr, 0};
  run_attention(p, nullptr, p.T, src, kv_dtype);
}

void mla_attention_cpu(const MlaAttentionParams& p, const void* kv, int64_t ldkv, int64_t value_col,
                       const int64_t* kv_pos, int64_t S, DType kv_dtype) {
  HELIX_CHECK(ldkv >= std::max(p.D, value_col + p.R) && value_col >= 0, "mla_attention: key rows of ", ldkv,
              " elements cannot hold scores over ", p.D, " and values at ", value_col);
  const KeySource src{static_cast<const unsigned char*>(kv),
                      ldkv * static_cast<int64_t>(dtype_size(kv_dtype)),
                      kv_pos,
                      S,
                      nullptr,
                      0,
                      value_col};
  run_attention(p, nullptr, p.T, src, kv_dtype);
}

void paged_mla_attention_cpu(const PagedMlaAttentionParams& p) {
  std::vector<std::vector<int64_t>> tokens(static_cast<size_t>(p.B));  // the query tokens of each sequence
  for (int64_t t = 0; t < p.T; ++t) tokens[p.q_seq[t]].push_back(t);
  MlaAttentionParams mp;
  mp.q = p.q;
  mp.q_pos = p.q_pos;
  mp.o = p.o;
  mp.lse = p.lse;
  mp.T = p.T;
  mp.H = p.H;
  mp.D = p.D;
  mp.R = p.R;
  mp.scale = p.scale;
  mp.q_dtype = p.q_dtype;
  for (int64_t b = 0; b < p.B; ++b) {
    if (tokens[b].empty()) continue;
    const KeySource src{static_cast<const unsigned char*>(p.pool),
                        p.D * dtype_size(p.kv_dtype),
                        p.kv_pos,
                        p.num_slots[b],
                        p.block_tables + b * p.max_blocks,
                        p.tokens_per_block};
    run_attention(mp, tokens[b].data(), static_cast<int64_t>(tokens[b].size()), src, p.kv_dtype);
  }
}

}  // namespace helix
