// Small kernels of the CUDA backend's decoder step (cuda/engine_kernels.cu), on `stream`. Internal to cuda/.
#pragma once

#include <cstdint>

#include "helix/device.hpp"

namespace helix::cuda {

// h[n] += y[n]; *flag = 1 when a result is NaN or Inf.
void launch_add_residual(float* h, const float* y, int64_t n, int* flag, StreamHandle stream);
// x[n]: values that are not finite become 0 (so routing stays in bounds) and raise *flag.
void launch_sanitize(float* x, int64_t n, int* flag, StreamHandle stream);
// dst[i, :width] = src[rows[i], :width] (src rows ld apart, dst dense), rows [n].
void launch_gather_rows(const float* src, const int64_t* rows, float* dst, int64_t n, int64_t width, int64_t ld,
                        StreamHandle stream);
void launch_gather_rows(const float* src, const int32_t* rows, float* dst, int64_t n, int64_t width, int64_t ld,
                        StreamHandle stream);
// pool_pos[rows[i]] = positions[i] for rows[i] >= 0 (rows [n]): the global positions of newly filled pool rows.
void launch_set_positions(int64_t* pool_pos, const int64_t* rows, const int64_t* positions, int64_t n,
                          StreamHandle stream);
// y[tok[i], :] += w[i] * src[i, :] (src [n, width]); the tok[i] of one launch are distinct.
void launch_scatter_add_weighted(float* y, const float* src, const int32_t* tok, const float* w, int64_t n,
                                 int64_t width, StreamHandle stream);
// Pool rows rows[i] of width D (of dtype): uniform values in [-scale, scale) from a hash of (seed, row, d).
void launch_fill_random(void* pool, DType dtype, const int64_t* rows, int64_t n, int64_t D, uint64_t seed, float scale,
                        StreamHandle stream);

}  // namespace helix::cuda
