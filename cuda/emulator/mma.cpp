// The tensor-core instruction of the SIMT emulator: mma.sync.m16n8k16 (bf16 in, fp32 accumulate) as a
// warp collective, from the PTX ISA's fragment tables, independently of how cuda/ assumes them.
#include <cstring>

#include "internal.hpp"

namespace simt::detail {

namespace {

struct MmaData {
  float* d;
  const uint32_t* a;
  uint32_t b0, b1;
};

float bf16_at(uint32_t reg, int half) {
  const uint32_t bits = half == 0 ? (reg & 0xffffu) : (reg >> 16);
  return __uint_as_float(bits << 16);
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 from the PTX ISA, section 9.7.14.5.8 "Matrix
// Fragments for mma.m16n8k16 with floating point type" (groupID = laneid >> 2, threadID_in_group =
// laneid % 4; within a .b32 register the element with the lower index is in the lower 16 bits):
//   A (16x16, four registers, elements a0..a7): row = groupID for ai with i < 2 or 4 <= i < 6, else
//     groupID + 8; col = threadID_in_group * 2 + (i & 1), plus 8 for i >= 4.
//   B (16x8, two registers, b0..b3): row (k) = threadID_in_group * 2 + (i & 1), plus 8 for i >= 2;
//     col (n) = groupID.
//   C/D (16x8 f32, c0..c3): row = groupID for i < 2, else groupID + 8; col = threadID_in_group * 2 + (i & 1).
// Products of bf16 values are exact in fp32; the emulator sums them in fp32 in k order onto C (the
// hardware's internal summation order is unspecified).
void complete_mma(void* const* lane_data, unsigned mask) {
  float A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const auto* m = static_cast<const MmaData*>(lane_data[lane]);
    const int group = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
      const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = bf16_at(m->a[i / 2], i & 1);
    }
    for (int i = 0; i < 4; ++i) {
      const int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      B[row][group] = bf16_at(i < 2 ? m->b0 : m->b1, i & 1);
    }
    for (int i = 0; i < 4; ++i) C[i < 2 ? group : group + 8][tig * 2 + (i & 1)] = m->d[i];
  }
  (void)mask;
  float D[16][8];
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 8; ++c) {
      float acc = C[r][c];
      for (int k = 0; k < 16; ++k) acc = fmaf(A[r][k], B[k][c], acc);
      D[r][c] = acc;
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    const auto* m = static_cast<const MmaData*>(lane_data[lane]);
    const int group = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 4; ++i) m->d[i] = D[i < 2 ? group : group + 8][tig * 2 + (i & 1)];
  }
}

}  // namespace

}  // namespace simt::detail

namespace simt {

void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                       const std::source_location& loc) {
  detail::MmaData m{d, a, b0, b1};
  // mma.sync.aligned needs all 32 lanes of the warp.
  detail::warp_collective(0xffffffffu, detail::complete_mma, &m, "mma.sync.m16n8k16", loc);
}

}  // namespace simt
