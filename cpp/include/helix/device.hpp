// Where an op runs, and the opaque CUDA stream its launch takes. Every op header
// (helix/ops/<op>.hpp) declares its CPU kernel `<op>_cpu(p)` and its CUDA launch
// `cuda::launch_<op>(p, stream)` next to one Params struct and one `check_<op>_args(..., Device)`:
// the check is where each device says which dtypes and shapes it runs (ArgumentError otherwise).
// No CUDA header is included (cpp/ stays CUDA-free): StreamHandle is the same type as cudaStream_t.
#pragma once

#include <cstdint>
#include <string_view>

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace helix {

enum class Device : uint8_t { Cpu, Cuda };

constexpr std::string_view device_label(Device d) { return d == Device::Cpu ? "cpu" : "cuda"; }

namespace cuda {
using StreamHandle = CUstream_st*;  // nullptr is the legacy default stream
}  // namespace cuda

}  // namespace helix
