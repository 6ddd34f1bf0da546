#include "helix/tensor.hpp"

#include <sstream>

namespace helix {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

void check_tensor(const TensorView& t, const char* name, int64_t ndim, std::initializer_list<DType> dtypes) {
  HELIX_CHECK_ARG(t.ndim() == ndim, "argument '", name, "' must have ", ndim, " dimensions, got shape ",
                  shape_str(t.shape));
  bool ok = false;
  std::string allowed;
  for (DType d : dtypes) {
    ok = ok || d == t.dtype;
    allowed += (allowed.empty() ? "" : " or ") + std::string(dtype_name(d));
  }
  HELIX_CHECK_ARG(ok, "argument '", name, "' must be ", allowed, ", got ", dtype_name(t.dtype));
  HELIX_CHECK_ARG(t.numel() == 0 || t.data != nullptr, "argument '", name, "' has no data");
}

void check_dim(const TensorView& t, const char* name, int64_t axis, int64_t expected, const char* what) {
  HELIX_CHECK_ARG(t.dim(axis) == expected, "argument '", name, "' has shape ", shape_str(t.shape), ": dimension ", axis,
                  " must equal ", what, " (", expected, ")");
}

bool overlaps(const TensorView& a, const TensorView& b) {
  if (a.nbytes() == 0 || b.nbytes() == 0) return false;
  const auto* a0 = static_cast<const unsigned char*>(a.data);
  const auto* b0 = static_cast<const unsigned char*>(b.data);
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

}  // namespace helix
