#include <nanobind/nanobind.h>

namespace nb = nanobind;

namespace helix::bind {
void bind_engine(nb::module_& m) {}
}  // namespace helix::bind
