// NumPy <-> TensorView at the binding boundary. bfloat16 arrays (ml_dtypes) cannot cross the buffer
// protocol or DLPack, so they are viewed as uint16 here and tagged BFloat16.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <vector>

#include "helix/tensor.hpp"

namespace helix::bind {

namespace nb = nanobind;

// A view into a NumPy array plus the reference that keeps the array alive.
struct HostArray {
  nb::object owner;
  TensorView view;
};

// Views `obj` without copying. Raises helix.ArgumentError naming `name` unless obj is a C-contiguous
// numpy.ndarray of a supported dtype (float32, bfloat16, float16, int64, int32, uint8).
HostArray to_view(nb::handle obj, const char* name);

// A new, uninitialized NumPy array of `dtype` and `shape`, with its view.
HostArray new_array(const std::vector<int64_t>& shape, DType dtype);

// A new NumPy array filled with zeros.
HostArray zeros(const std::vector<int64_t>& shape, DType dtype);

// 1-D NumPy copies of host values: int64 [n] and int32 [n].
nb::object int64_array(const int64_t* values, int64_t n);
nb::object int32_array(const int32_t* values, int64_t n);

}  // namespace helix::bind
