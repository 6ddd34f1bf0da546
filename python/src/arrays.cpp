#include "arrays.hpp"

#include <nanobind/stl/string.h>

#include <cstring>
#include <string>

namespace helix::bind {

namespace {

// Leaked on purpose: a static nb::object would be released after the interpreter is gone (crash at exit).
nb::handle numpy() {
  static nb::handle np = nb::module_::import_("numpy").release();
  return np;
}

nb::object numpy_dtype(DType dtype) {
  if (dtype == DType::BFloat16) {
    static nb::handle bf16 = nb::object(nb::module_::import_("ml_dtypes").attr("bfloat16")).release();
    return nb::borrow(bf16);
  }
  return numpy().attr("dtype")(std::string(dtype_name(dtype)));
}

bool parse_dtype(const std::string& name, DType& out) {
  static const std::pair<const char*, DType> table[] = {{"float32", DType::Float32}, {"bfloat16", DType::BFloat16},
                                                        {"float16", DType::Float16}, {"int64", DType::Int64},
                                                        {"int32", DType::Int32},     {"uint8", DType::UInt8}};
  for (const auto& [n, d] : table) {
    if (name == n) {
      out = d;
      return true;
    }
  }
  return false;
}

}  // namespace

HostArray to_view(nb::handle obj, const char* name) {
  if (!nb::isinstance(obj, numpy().attr("ndarray"))) {
    throw ArgumentError(detail::concat("argument '", name, "' must be a numpy.ndarray, got ",
                                       nb::cast<std::string>(nb::str(obj.type().attr("__name__")))));
  }
  std::string dname = nb::cast<std::string>(obj.attr("dtype").attr("name"));
  HostArray out;
  if (!parse_dtype(dname, out.view.dtype)) {
    throw ArgumentError(detail::concat("argument '", name, "' has unsupported dtype ", dname));
  }
  if (!nb::cast<bool>(obj.attr("flags").attr("c_contiguous"))) {
    throw ArgumentError(detail::concat("argument '", name, "' must be C-contiguous (use numpy.ascontiguousarray)"));
  }
  out.owner = nb::borrow(obj);
  nb::object plain = out.view.dtype == DType::BFloat16 ? obj.attr("view")(numpy().attr("uint16")) : out.owner;
  auto nd = nb::cast<nb::ndarray<nb::ro, nb::device::cpu>>(plain, false);
  out.view.data = const_cast<void*>(nd.data());
  out.view.shape.resize(nd.ndim());
  for (size_t i = 0; i < nd.ndim(); ++i) out.view.shape[i] = static_cast<int64_t>(nd.shape(i));
  return out;
}

HostArray new_array(const std::vector<int64_t>& shape, DType dtype) {
  nb::list dims;
  for (int64_t s : shape) dims.append(s);
  return to_view(numpy().attr("empty")(nb::tuple(dims), numpy_dtype(dtype)), "output");
}

HostArray zeros(const std::vector<int64_t>& shape, DType dtype) {
  nb::list dims;
  for (int64_t s : shape) dims.append(s);
  return to_view(numpy().attr("zeros")(nb::tuple(dims), numpy_dtype(dtype)), "output");
}

nb::object int64_array(const int64_t* values, int64_t n) {
  HostArray out = new_array({n}, DType::Int64);
  if (n > 0) std::memcpy(out.view.data, values, static_cast<size_t>(n) * sizeof(int64_t));
  return out.owner;
}

nb::object int32_array(const int32_t* values, int64_t n) {
  HostArray out = new_array({n}, DType::Int32);
  if (n > 0) std::memcpy(out.view.data, values, static_cast<size_t>(n) * sizeof(int32_t));
  return out.owner;
}

}  // namespace helix::bind
