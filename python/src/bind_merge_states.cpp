// merge_states, bound twice with one signature: helix._core.ops (CPU) and helix._core.cuda (GPU, host
// arrays in and out). Contract: cpp/include/helix/ops/merge_states.hpp.
#include <nanobind/nanobind.h>
#include <nanobind/stl/tuple.h>

#include <vector>

#include "arrays.hpp"
#include "device_call.hpp"
#include "helix/ops/merge_states.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

namespace {

nb::tuple merge_states_py(Device dev, nb::handle o_parts, nb::handle lse_parts) {
  HostArray op = to_view(o_parts, "o_parts"), lp = to_view(lse_parts, "lse_parts");
  HELIX_CHECK_ARG(op.view.ndim() >= 2, "argument 'o_parts' must have shape [N, ..., D], got ",
                  shape_str(op.view.shape));
  const std::vector<int64_t> o_shape(op.view.shape.begin() + 1, op.view.shape.end());        // [..., D]
  const std::vector<int64_t> lse_shape(op.view.shape.begin() + 1, op.view.shape.end() - 1);  // [...]
  HostArray o = new_array(o_shape, DType::Float32), lse = new_array(lse_shape, DType::Float32);
  MergeStatesParams p = check_merge_states_args(op.view, lp.view, o.view, lse.view, dev);
  if (dev == Device::Cpu) {
    nb::gil_scoped_release release;
    merge_states_cpu(p);
  } else {
    DeviceCall c;
    p.o_parts = c.in<const float>(op.view);
    p.lse_parts = c.in<const float>(lp.view);
    p.o = c.out<float>(o.view);
    p.lse = c.out<float>(lse.view);
    cuda::launch_merge_states(p, nullptr);
    c.finish();
  }
  return nb::make_tuple(o.owner, lse.owner);
}

}  // namespace

void bind_merge_states(nb::module_& m, Device dev) {
  m.def(
      "merge_states",
      [dev](nb::handle o_parts, nb::handle lse_parts) { return merge_states_py(dev, o_parts, lse_parts); }, "o_parts"_a,
      "lse_parts"_a,
      "Exact log-sum-exp merge of N partial attention states.\n\n"
      "o_parts [N, ..., D] float32, lse_parts [N, ...] float32 (natural log) -> (o [..., D], lse [...]).\n"
      "All -inf rows give (0, -inf); finite or -inf inputs never give NaN (cuda: N <= 256).");
}

}  // namespace helix::bind
