#include <nanobind/nanobind.h>

namespace nb = nanobind;

namespace helix::bind {
void bind_layers(nb::module_& m) {}
}  // namespace helix::bind
