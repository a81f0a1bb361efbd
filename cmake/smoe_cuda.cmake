# The optional CUDA backend (docs/cuda.md). CPU builds never need CUDA: the smoe::cuda target, its
# tests and benchmarks exist only when SMOE_CUDA is ON and check_language finds nvcc.
#
#   -DSMOE_CUDA=OFF                          skip the CUDA part even when nvcc is installed
#   -DCMAKE_CUDA_ARCHITECTURES="90;100"      architectures to build for (default 90)
#
# After this file, SMOE_CUDA_ENABLED tells the test and bench directories whether to add the GPU parts.
include_guard(GLOBAL)

option(SMOE_CUDA "Build smoe's CUDA backend target, tests and benchmarks when nvcc is found" ON)
set(SMOE_CUDA_ENABLED OFF)

if(NOT SMOE_CUDA)
  message(STATUS "smoe: CUDA backend not built (SMOE_CUDA is OFF)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "smoe: CUDA backend not built (no CUDA compiler found; put nvcc on PATH or set CMAKE_CUDA_COMPILER)")
  return()
endif()

# CMake's own default is the compiler's oldest architecture (sm_75 for nvcc 13), which has no bf16
# tensor cores; `native` fails on a machine without a GPU, `all` compiles five times longer.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES 90)
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

add_library(smoe_cuda INTERFACE)
add_library(smoe::cuda ALIAS smoe_cuda)
# cmake 3.25 knows CUDA standards only up to 17 (CMAKE_CUDA_STANDARD 20 is rejected and cxx_std_20
# does not reach .cu files), so the flag is given by hand; --expt-relaxed-constexpr lets device code
# call constexpr host functions such as std::numeric_limits (shared/toolchain.md §3). CUDA::cudart
# only: never the driver stub (libcuda), whose link makes an executable fail to load without a driver.
target_link_libraries(smoe_cuda INTERFACE smoe CUDA::cudart)
target_compile_options(smoe_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --expt-relaxed-constexpr>)
set(SMOE_CUDA_ENABLED ON)
message(STATUS "smoe: CUDA backend built (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")

if(SMOE_BUILD_BENCH)
  add_subdirectory(${PROJECT_SOURCE_DIR}/bench/cuda ${PROJECT_BINARY_DIR}/bench/cuda)
endif()
