// A non-owning view of a dense, row-major (C-contiguous) array on the host or a device.
// Kernels take raw pointers; this view exists for validation at the op boundary.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "helix/dtype.hpp"
#include "helix/error.hpp"

namespace helix {

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;  // row-major, contiguous

  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t dim(int64_t i) const { return shape.at(static_cast<size_t>(i < 0 ? i + ndim() : i)); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  int64_t nbytes() const { return numel() * dtype_size(dtype); }
  template <class T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
};

std::string shape_str(const std::vector<int64_t>& shape);

// Throws ArgumentError naming `name` unless `t` has `ndim` dimensions and one of `dtypes`.
void check_tensor(const TensorView& t, const char* name, int64_t ndim, std::initializer_list<DType> dtypes);

// Throws ArgumentError naming `name` unless dimension `axis` of `t` equals `expected`.
void check_dim(const TensorView& t, const char* name, int64_t axis, int64_t expected, const char* what);

// True when the bytes of a and b intersect (empty views overlap nothing).
bool overlaps(const TensorView& a, const TensorView& b);

}  // namespace helix
