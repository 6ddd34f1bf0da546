#include <nanobind/nanobind.h>

namespace nb = nanobind;

namespace helix::bind {
void bind_comm(nb::module_& m) {}
}  // namespace helix::bind
