#include <nanobind/nanobind.h>

namespace nb = nanobind;

namespace helix::bind {
void bind_kv_cache(nb::module_& m) {}
}  // namespace helix::bind
