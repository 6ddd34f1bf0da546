// The Helix attention step on the GPU (contract: cpp/include/helix/helix_attention.hpp; the CPU twin:
// cpp/src/helix_attention.cpp): kv_append of the owned rows, paged partial attention, optional W_UV, pack
// (o, lse) per destination with strided copies, ONE all-to-all over the CP group on the stream, unpack,
// merge_states. Every buffer comes from the caller's workspace, so a step allocates nothing.
#include <cuda_runtime.h>

#include "common.cuh"
#include "helix/helix_attention.hpp"
#include "helix/ops/kv_append.hpp"
#include "helix/ops/merge_states.hpp"

namespace helix::cuda {

namespace {

// The workspace, carved in order (each piece 256-byte aligned); with base == nullptr only the size is counted.
struct Workspace {
  float* o_part = nullptr;     // [T, H, R]
  float* lse_part = nullptr;   // [T, H]
  float* attn = nullptr;       // [attention_workspace_floats] split-KV partials
  uint16_t* o_bf16 = nullptr;  // [T, H, R] the partials rounded for a bfloat16 W_UV
  float* values = nullptr;     // [T, H, W] after W_UV
  float* send = nullptr;       // [cp, T * Hc * (W + 1)]
  float* recv = nullptr;       // [cp, T * Hc * (W + 1)]
  float* o_parts = nullptr;    // [cp, T * Hc, W]
  float* lse_parts = nullptr;  // [cp, T * Hc]
  float* lse_out = nullptr;    // [T * Hc]
  size_t bytes = 0;

  Workspace(const HelixAttentionParams& p, int64_t cp, void* base) {
    const int64_t T = p.T, H = p.H, Hc = H / cp, block = T * Hc * (p.W + 1);
    PagedMlaAttentionParams a = local_attention_params(p, nullptr, nullptr);
    take(base, o_part, T * H * p.R);
    take(base, lse_part, T * H);
    take(base, attn, attention_workspace_floats(a));
    if (p.w_uv != nullptr && p.w_uv_dtype == DType::BFloat16) take(base, o_bf16, T * H * p.R);
    if (p.w_uv != nullptr) take(base, values, T * H * p.W);
    if (cp > 1) {
      take(base, send, cp * block);
      take(base, recv, cp * block);
      take(base, o_parts, cp * T * Hc * p.W);
      take(base, lse_parts, cp * T * Hc);
    }
    take(base, lse_out, T * Hc);
  }

 private:
  template <class T>
  void take(void* base, T*& out, int64_t count) {
    bytes = (bytes + 255) / 256 * 256;
    out = base != nullptr ? reinterpret_cast<T*>(static_cast<unsigned char*>(base) + bytes) : nullptr;
    bytes += static_cast<size_t>(count) * sizeof(T);
  }
};

void copy_2d(void* dst, int64_t dst_pitch, const void* src, int64_t src_pitch, int64_t width, int64_t rows,
             StreamHandle stream) {
  HELIX_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice, stream));
}

}  // namespace

size_t helix_attention_workspace_bytes(const HelixAttentionParams& p, int64_t cp) {
  return Workspace(p, cp, nullptr).bytes;
}

void launch_helix_attention(const HelixAttentionParams& p, Communicator& cp_comm, StreamHandle stream,
                            const HelixStageMark& mark) {
  const int64_t T = p.T, H = p.H, W = p.W, cp = cp_comm.size(), Hc = H / cp;
  const auto done = [&](HelixStage stage) {
    if (mark) mark(stage);
  };
  const Workspace ws(p, cp, p.workspace);
  launch_kv_append(KvAppendParams{p.pool, p.new_kv, p.new_rows, T, p.D * dtype_size(p.kv_dtype)}, stream);
  done(HelixStage::Append);

  PagedMlaAttentionParams a = local_attention_params(p, ws.o_part, ws.lse_part);
  a.workspace = ws.attn;
  launch_paged_mla_attention(a, AttentionKernel::Auto, stream);
  done(HelixStage::Attention);

  const float* values = ws.o_part;  // [T, H, W]
  if (p.w_uv != nullptr) {
    const void* x = ws.o_part;
    if (p.w_uv_dtype == DType::BFloat16) {  // cuBLAS takes x in W_UV's dtype
      detail::launch_to_bf16(ws.o_part, ws.o_bf16, T * H * p.R, stream);
      x = ws.o_bf16;
    }
    launch_head_linear(wuv_params(p, x, p.w_uv_dtype, ws.values), stream);
    values = ws.values;
  }
  done(HelixStage::Project);

  const float* parts_o = values;  // [cp, T*Hc, W] partial states of this rank's head chunk
  const float* parts_lse = ws.lse_part;
  if (cp > 1) {
    // Pack: block c = [T, Hc, W] values of head chunk c, then [T, Hc] lse. One message per destination.
    const int64_t block = T * Hc * (W + 1);
    for (int64_t c = 0; c < cp; ++c) {
      copy_2d(ws.send + c * block, Hc * W * 4, values + c * Hc * W, H * W * 4, Hc * W * 4, T, stream);
      copy_2d(ws.send + c * block + T * Hc * W, Hc * 4, ws.lse_part + c * Hc, H * 4, Hc * 4, T, stream);
    }
    cp_comm.all_to_all(ws.send, ws.recv, static_cast<size_t>(block) * 4);
    done(HelixStage::Exchange);
    copy_2d(ws.o_parts, T * Hc * W * 4, ws.recv, block * 4, T * Hc * W * 4, cp, stream);
    copy_2d(ws.lse_parts, T * Hc * 4, ws.recv + T * Hc * W, block * 4, T * Hc * 4, cp, stream);
    parts_o = ws.o_parts;
    parts_lse = ws.lse_parts;
  }
  launch_merge_states(MergeStatesParams{parts_o, parts_lse, p.out, ws.lse_out, cp, T * Hc, W}, stream);
  done(HelixStage::Merge);
}

}  // namespace helix::cuda
