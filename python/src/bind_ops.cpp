#include <nanobind/nanobind.h>

namespace nb = nanobind;

namespace helix::bind {
void bind_ops(nb::module_& m) {}
}  // namespace helix::bind
