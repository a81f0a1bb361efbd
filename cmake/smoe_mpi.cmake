# Optional MPI for smoe::dist (expert parallelism over MPI): sets SMOE_HAVE_MPI and, when MPI is found,
# defines smoe::mpi (smoe::smoe + MPI::MPI_CXX) for include/smoe/dist/mpi_communicator.hpp. Without
# MPI everything else builds and tests as before; the MPI tests and bench/dist are skipped.
# smoe::mpi is a build-tree target: an installed consumer links smoe::smoe and MPI::MPI_CXX itself.
include_guard(GLOBAL)

find_package(MPI COMPONENTS CXX QUIET)
if(MPI_CXX_FOUND)
  set(SMOE_HAVE_MPI ON)
  add_library(smoe_mpi INTERFACE)
  add_library(smoe::mpi ALIAS smoe_mpi)
  target_link_libraries(smoe_mpi INTERFACE smoe MPI::MPI_CXX)
  message(STATUS "smoe: MPI ${MPI_CXX_VERSION} found (${MPIEXEC_EXECUTABLE}): smoe::mpi, the MPI tests and bench/dist are built")
else()
  set(SMOE_HAVE_MPI OFF)
  message(STATUS "smoe: MPI not found (Debian: libopenmpi-dev openmpi-bin): the MPI tests and bench/dist are skipped")
endif()
