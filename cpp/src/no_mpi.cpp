// Built instead of mpi_comm.cpp when CMake finds no MPI: the factory exists and says why it cannot work.
#include "helix/comm.hpp"
#include "helix/error.hpp"

namespace helix {

std::unique_ptr<Communicator> make_mpi_communicator(int64_t) {
  throw Error("make_mpi_communicator: helix was built without MPI (install mpich + mpi4py and rebuild)");
}

}  // namespace helix
