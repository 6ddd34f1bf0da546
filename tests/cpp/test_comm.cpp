// helix::Communicator without MPI running: the self backend, and the MPI factory's refusal before MPI_Init.
// The MPI backend itself is tested under mpiexec (tests/mpi/test_comm.py).
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <string>

#include "helix/comm.hpp"
#include "helix/error.hpp"

using namespace helix;

TEST(SelfCommunicator, CollectivesCopy) {
  auto comm = make_self_communicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  std::array<float, 4> send{1, 2, 3, 4};
  std::array<float, 4> recv{};
  comm->all_to_all(send.data(), recv.data(), sizeof(send));
  EXPECT_EQ(recv, send);
  recv.fill(0);
  comm->all_gather(send.data(), recv.data(), sizeof(send));
  EXPECT_EQ(recv, send);
  comm->all_reduce_sum(send.data(), 4, DType::Float32);
  EXPECT_EQ(send, (std::array<float, 4>{1, 2, 3, 4}));
  comm->broadcast(send.data(), sizeof(send), 0);
  comm->barrier();
  comm->all_to_all(nullptr, nullptr, 0);  // zero-size messages are fine
  auto sub = comm->split(5, 0);
  EXPECT_EQ(sub->size(), 1);
}

TEST(SelfCommunicator, RejectsBadArguments) {
  auto comm = make_self_communicator();
  float x = 0;
  EXPECT_THROW(comm->broadcast(&x, 4, 1), ArgumentError);
  EXPECT_THROW(comm->all_reduce_sum(&x, 1, DType::Int64), ArgumentError);
  EXPECT_THROW(comm->all_reduce_sum(&x, -1, DType::Float32), ArgumentError);
  EXPECT_THROW(comm->split(-1, 0), ArgumentError);
}

TEST(MpiCommunicator, RefusesBeforeMpiInit) {
  // This test binary never initializes MPI: the factory must throw, not crash or abort. (Without MPI at
  // build time, no_mpi.cpp throws "built without MPI" instead.)
  try {
    make_mpi_communicator(0x44000000);
    FAIL() << "expected helix::Error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_TRUE(what.find("not initialized") != std::string::npos || what.find("without MPI") != std::string::npos)
        << what;
  }
}
