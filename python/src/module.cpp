// helix._core: the compiled runtime. One bind_* function per public header; the Python package
// (python/helix) re-exports what users need.
#include <nanobind/nanobind.h>

#include "helix/device.hpp"
#include "helix/error.hpp"

namespace nb = nanobind;

namespace helix::bind {
void bind_block_table(nb::module_& m);
void bind_kv_cache(nb::module_& m);
void bind_ops(nb::module_& m);
void bind_layers(nb::module_& m);
void bind_comm(nb::module_& m);
void bind_engine(nb::module_& m);
void bind_kv_transfer(nb::module_& m);
void bind_cuda(nb::module_& m);
void bind_cuda_bench(nb::module_& m);
void bind_merge_states(nb::module_& m, Device dev);
}  // namespace helix::bind

NB_MODULE(_core, m) {
  m.doc() = "Helix runtime: paged KV cache, attention and merge kernels, communicators, decoder engine";
  // Registered base first: nanobind tries the most recently registered translator first.
  auto base = nb::exception<helix::Error>(m, "HelixError", PyExc_RuntimeError);
  // ArgumentError is both a HelixError and a ValueError, so either `except` catches it.
  nb::object bases = nb::make_tuple(base, nb::handle(PyExc_ValueError));
  PyObject* arg_error = PyErr_NewException("helix._core.ArgumentError", bases.ptr(), nullptr);
  m.attr("ArgumentError") = nb::steal(arg_error);
  nb::register_exception_translator(
      [](const std::exception_ptr& p, void* type) {
        try {
          std::rethrow_exception(p);
        } catch (const helix::ArgumentError& e) {
          PyErr_SetString(static_cast<PyObject*>(type), e.what());
        }
      },
      arg_error);
  nb::exception<helix::KVCacheFullError>(m, "KVCacheFullError", base.ptr());
  nb::exception<helix::DeviceMemoryError>(m, "DeviceMemoryError", base.ptr());
  helix::bind::bind_block_table(m);
  helix::bind::bind_kv_cache(m);
  helix::bind::bind_ops(m);
  {  // def_submodule returns helix._core.ops if bind_ops created it (PyImport_AddModule semantics).
    nb::module_ ops = m.def_submodule("ops");
    helix::bind::bind_merge_states(ops, helix::Device::Cpu);
  }
  helix::bind::bind_layers(m);
  helix::bind::bind_comm(m);
  helix::bind::bind_engine(m);
  helix::bind::bind_kv_transfer(m);
  helix::bind::bind_cuda(m);
  helix::bind::bind_cuda_bench(m);
}
