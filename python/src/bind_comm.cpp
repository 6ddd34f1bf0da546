// helix._core.Communicator: NumPy in, new NumPy out; every collective runs with the GIL released.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>

#include <cstring>
#include <vector>

#include "arrays.hpp"
#include "helix/comm.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace helix::bind {

namespace {

// A new array of the same shape and dtype holding a copy of `in` (collectives never modify their input).
HostArray copy_of(const HostArray& in) {
  HostArray out = new_array(in.view.shape, in.view.dtype);
  if (in.view.nbytes() > 0) std::memcpy(out.view.data, in.view.data, static_cast<size_t>(in.view.nbytes()));
  return out;
}

nb::object all_to_all(Communicator& comm, nb::handle send_obj) {
  HostArray send = to_view(send_obj, "send");
  const int64_t n = comm.size();
  HELIX_CHECK_ARG(send.view.ndim() >= 1 && send.view.dim(0) == n, "argument 'send' must have shape [size=", n,
                  ", ...] (block r goes to rank r), got ", shape_str(send.view.shape));
  HostArray recv = new_array(send.view.shape, send.view.dtype);
  const auto block_bytes = static_cast<size_t>(send.view.nbytes() / n);
  {
    nb::gil_scoped_release release;
    comm.all_to_all(send.view.data, recv.view.data, block_bytes);
  }
  return recv.owner;
}

nb::object all_reduce_sum(Communicator& comm, nb::handle array_obj) {
  HostArray in = to_view(array_obj, "array");
  HELIX_CHECK_ARG(in.view.dtype == DType::Float32 || in.view.dtype == DType::BFloat16,
                  "argument 'array' must be float32 or bfloat16, got ", dtype_name(in.view.dtype));
  HostArray out = copy_of(in);
  {
    nb::gil_scoped_release release;
    comm.all_reduce_sum(out.view.data, out.view.numel(), out.view.dtype);
  }
  return out.owner;
}

nb::object all_gather(Communicator& comm, nb::handle array_obj) {
  HostArray in = to_view(array_obj, "array");
  std::vector<int64_t> shape{comm.size()};
  shape.insert(shape.end(), in.view.shape.begin(), in.view.shape.end());
  HostArray out = new_array(shape, in.view.dtype);
  {
    nb::gil_scoped_release release;
    comm.all_gather(in.view.data, out.view.data, static_cast<size_t>(in.view.nbytes()));
  }
  return out.owner;
}

nb::object broadcast(Communicator& comm, nb::handle array_obj, int root) {
  HostArray in = to_view(array_obj, "array");
  HELIX_CHECK_ARG(root >= 0 && root < comm.size(), "argument 'root' must be in [0, ", comm.size(), "), got ", root);
  HostArray out = copy_of(in);
  {
    nb::gil_scoped_release release;
    comm.broadcast(out.view.data, static_cast<size_t>(out.view.nbytes()), root);
  }
  return out.owner;
}

}  // namespace

void bind_comm(nb::module_& m) {
  nb::class_<Communicator>(m, "Communicator",
                           "A group of ranks and the collectives Helix needs. Every method is collective: all "
                           "ranks of the group call it in the same order with arrays of the same shape and "
                           "dtype. Inputs are never modified; results are new arrays.")
      .def_prop_ro("rank", &Communicator::rank, "This process's index in the group.")
      .def_prop_ro("size", &Communicator::size, "Number of ranks in the group.")
      .def("all_to_all", &all_to_all, "send"_a,
           "send[size, ...] -> recv of the same shape and dtype: send[r] goes to rank r, recv[r] came from "
           "rank r.")
      .def("all_reduce_sum", &all_reduce_sum, "array"_a,
           "Element-wise sum over the ranks (float32, or bfloat16 summed in float32 and rounded once).")
      .def("all_gather", &all_gather, "array"_a, "array[...] -> [size, ...]: row r is rank r's array.")
      .def("broadcast", &broadcast, "array"_a, "root"_a,
           "Returns rank `root`'s array on every rank (`array` gives the shape and dtype elsewhere).")
      .def(
          "barrier",
          [](Communicator& comm) {
            nb::gil_scoped_release release;
            comm.barrier();
          },
          "Returns when every rank of the group has entered it.")
      .def(
          "split",
          [](Communicator& comm, int color, int key) {
            nb::gil_scoped_release release;
            return comm.split(color, key);
          },
          "color"_a, "key"_a,
          "Sub-communicator of the ranks with the same color (>= 0), ranked by key (ties by rank), as "
          "MPI_Comm_split.")
      .def("__repr__", [](const Communicator& comm) {
        return detail::concat("<helix._core.Communicator rank=", comm.rank(), " size=", comm.size(), ">");
      });

  m.def("self_communicator", &make_self_communicator, "A communicator of this process alone (size 1, no MPI).");
  m.def(
      "mpi_communicator",
      [](nb::int_ handle) {
        // mpi4py's _handleof returns MPICH's int handles sign-extended and read as unsigned 64-bit
        // (0x84000000 -> 0xffffffff84000000): accept the whole [-2^63, 2^64) range, keep the bits.
        int64_t h = 0;
        uint64_t u = 0;
        if (!nb::try_cast<int64_t>(handle, h)) {
          HELIX_CHECK_ARG(nb::try_cast<uint64_t>(handle, u), "argument 'handle' is not a 64-bit MPI handle");
          h = static_cast<int64_t>(u);
        }
        return make_mpi_communicator(h);
      },
      "handle"_a,
      "Wraps an MPI communicator given by its handle (mpi4py: MPI._handleof(comm)); the communicator is "
      "duplicated, so later traffic never mixes with the caller's.");
}

}  // namespace helix::bind
