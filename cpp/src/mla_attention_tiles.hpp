// Internal: the tile operations of the MLA attention kernel, one set per instruction set and key dtype.
//
// The driver (mla_attention.cpp) works on a block of Mp query rows (flattened (t, h), Mp a multiple of 16)
// and walks the keys in tiles of at most kKeyTile rows. Every buffer is "transposed": the fast axis is the
// query row m, so the online-softmax state is a vector along m and the micro-kernels broadcast one key (or
// value) element against 16 query rows at a time.
//
//   qpack  f32 keys:  [D][Mp] float           (q, rows m >= M zero)
//          bf16 keys: [ceil(D/2)][Mp][2] bf16 (pairs of consecutive d for the BF16 dot product)
//          AMX:       the same pairs, D rounded up to 32 and the rows padded (mla_attention_amx.cpp)
//   keys   [nt] row pointers, each [D] of the key dtype
//   St     [nt][Mp] float: raw dot products, then the softmax weights P in place
//   OT     [R][Mp] float: the unnormalized output accumulator, transposed (OLayout::Transposed), or
//   O      [Mp][o_row_stride(R)] float: row-major (OLayout::RowMajor, the AMX tiles: the weights are the A
//          operand); the row stride is padded by one cache line so that the 16 rows of a tile do not share
//          a few L1 sets when R*4 is a power of two
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "helix/dtype.hpp"

namespace helix::detail {

// A 64-byte aligned buffer that only grows; one per thread, so repeated calls do not fault pages in again.
// (Also the workspace of the AMX linear path, linear.cpp.)
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(ptr_); }
  // nullptr when out of memory (kernels run inside OpenMP regions, where nothing may throw).
  template <class T>
  T* get(int64_t count) {
    const size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
    if (bytes > cap_) {
      std::free(ptr_);
      ptr_ = std::aligned_alloc(64, bytes);
      cap_ = ptr_ ? bytes : 0;
    }
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t cap_ = 0;
};

inline constexpr int64_t kKeyTile = 64;    // keys per online-softmax step (AVX-512, portable)
inline constexpr int64_t kRowBlock = 128;  // query rows per work item (Q panel + OT stay in L2)
inline constexpr float kLog2e = 1.4426950408889634f;

// Scratch a tile set may use (bf16: the packed softmax weights and values).
struct TileScratch {
  uint16_t* p_pairs;  // [key_tile/2][Mp][2]
  uint16_t* v_pairs;  // [key_tile/2][R][2]
  void* extra;        // TileOps::extra_bytes(D, R, Mp) bytes, 64-byte aligned (nullptr when 0)
  // The key rows of the next tile (a prefetch hint; none when next_count == 0), each next_row_bytes long.
  const void* const* next_rows = nullptr;  // [next_count]
  int64_t next_count = 0;
  int64_t next_row_bytes = 0;
};

enum class OLayout : uint8_t { Transposed, RowMajor };
inline int64_t o_row_stride(int64_t R) { return R + 16; }

struct TileOps {
  // The key dtype qk/pv read. Float32 ops serve bfloat16 keys too: the driver widens each tile first.
  DType key_dtype;
  // Keys per online-softmax step (a multiple of 16) and the layout of the output
  // accumulator.
  int64_t key_tile;
  OLayout o_layout;
  // Bytes of TileScratch::extra for D, R, Mp.
  int64_t (*extra_bytes)(int64_t D, int64_t R, int64_t Mp);
  // Bytes of qpack for D x Mp.
  int64_t (*qpack_bytes)(int64_t D, int64_t Mp);
  // rows: [M] pointers to q rows ([D] of q_dtype); rows m in [M, Mp) are packed as zero.
  void (*pack_q)(const void* const* rows, int64_t M, int64_t Mp, int64_t D, DType q_dtype, void* qpack);
  // St[n][m] = dot(q[m], key[n]) for n < nt.
  void (*qk)(const void* qpack, const void* const* keys, int64_t nt, int64_t D, int64_t Mp, float* St,
             const TileScratch& scratch);
  // Online softmax step over St (scores; -inf = masked) with c = scale*log2(e); m_run/l_run: [Mp] running
  // max (log2 domain) and sum; alpha: [Mp] factor for OT. Turns St into the weights P. Returns true when
  // some alpha != 1.
  bool (*softmax)(float* St, int64_t nt, int64_t Mp, float c, float* m_run, float* l_run, float* alpha);
  // OT[r][m] (or O[m][r], see o_row_stride) += sum_n P[n][m] * key[n][r] for r < R.
  void (*pv)(const float* P, const void* const* keys, int64_t nt, int64_t R, int64_t Mp, float* OT,
             const TileScratch& scratch);
};

const TileOps& portable_tile_ops(DType kv_dtype);
// AVX-512F float32 FMA kernels (any key dtype, bf16 widened by the driver); nullptr without AVX-512.
const TileOps* avx512_tile_ops();
// AVX-512 BF16 dot-product kernels for bfloat16 keys; nullptr without AVX512_BF16. split: q and the softmax
// weights go in as bf16 hi + lo pairs (two products each), as in amx_tile_ops(true).
const TileOps* avx512_bf16_tile_ops(bool split);
// AMX-BF16 tile kernels for bfloat16 keys; nullptr without AMX-BF16 + AVX512_BF16 or when the OS refuses
// the tile-data permission. split: q and the softmax weights go in as bf16 hi + lo pairs (two products
// each), so only about 2^-16 of their relative precision is lost instead of 2^-8.
// Both sets' pack_q + qk are also the AMX paths of linear (linear.cpp): qk is a plain
// St[n][m] = dot(row m of x, weight row n) product over bf16 weight rows.
const TileOps* amx_tile_ops(bool split);
// Why amx_tile_ops is nullptr (the missing CPU feature or OS permission); empty when AMX is usable.
std::string_view amx_unavailable();
inline int64_t no_extra_bytes(int64_t, int64_t, int64_t) { return 0; }

// exp2 with underflow flushed to zero: weights below 2^-126 of the running max are dropped exactly, so no
// denormal ever reaches the products. NaN stays NaN.
inline float exp2_flush(float x) { return x < -126.f ? 0.f : __builtin_exp2f(x); }

}  // namespace helix::detail
