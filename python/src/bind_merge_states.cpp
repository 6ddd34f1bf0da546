// helix._core.ops.merge_states: a thin binding of helix::merge_states (cpp/include/helix/ops/merge_states.hpp).
#include <nanobind/nanobind.h>

#include "arrays.hpp"
#include "helix/ops/merge_states.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

// `ops` is the helix._core.ops submodule.
void bind_merge_states(nb::module_& ops) {
  ops.def(
      "merge_states",
      [](nb::handle o_parts, nb::handle lse_parts) {
        HostArray op = to_view(o_parts, "o_parts");
        HostArray lp = to_view(lse_parts, "lse_parts");
        check_tensor(op.view, "o_parts", 4, {DType::Float32});
        const int64_t T = op.view.dim(1), H = op.view.dim(2), D = op.view.dim(3);
        HostArray o = new_array({T, H, D}, DType::Float32);
        HostArray lse = new_array({T, H}, DType::Float32);
        {
          nb::gil_scoped_release release;
          merge_states(op.view, lp.view, o.view, lse.view);
        }
        return nb::make_tuple(o.owner, lse.owner);
      },
      "o_parts"_a, "lse_parts"_a,
      "Exact log-sum-exp merge of N partial attention states.\n\n"
      "o_parts [N, T, H, D] float32, lse_parts [N, T, H] float32 (natural log) -> (o [T, H, D], lse [T, H]).\n"
      "All -inf rows give (0, -inf); finite or -inf inputs never give NaN.");
}

}  // namespace helix::bind
