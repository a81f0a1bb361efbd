# Flags for smoe's own executables (tests, benches, examples); never for the smoe interface target.
include_guard(GLOBAL)
include(${CMAKE_CURRENT_LIST_DIR}/smoe_avx512_codegen.cmake)

# -march=native gives AVX-512 on this machine: every such unit needs the codegen workaround
# (smoe_avx512_codegen.cmake). Asked once, not per target.
if(SMOE_NATIVE)
  smoe_native_has_avx512(SMOE_NATIVE_AVX512)
  if(SMOE_NATIVE_AVX512)
    smoe_avx512_codegen_flags(SMOE_NATIVE_AVX512_FLAGS)
  endif()
endif()

# smoe_target_options(<target>): warnings, and -march=native when SMOE_NATIVE is ON (with the AVX-512
# codegen workaround where native means AVX-512 and the compiler needs it).
function(smoe_target_options target)
  target_compile_options(${target} PRIVATE
    $<$<CXX_COMPILER_ID:GNU,Clang,AppleClang>:-Wall -Wextra>
    # g++ 12 reports false -Wmaybe-uninitialized from its own AVX/AVX-512 intrinsic headers via
    # xsimd and Eigen GEMM; -isystem does not hide them (shared/toolchain.md, section 2).
    $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized>
    # Configs are aggregates built with C++20 designated initializers, where leaving a member at its
    # default is the point; g++'s and clang's -Wextra flag every omitted member.
    $<$<CXX_COMPILER_ID:GNU,Clang,AppleClang>:-Wno-missing-field-initializers>
    # g++ 12 at -O2/-O3 reports false -Wrestrict inside libstdc++'s std::string operator+ (GCC PR 105651).
    $<$<AND:$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>>:-Wno-restrict>)
  if(SMOE_NATIVE)
    target_compile_options(${target} PRIVATE $<$<CXX_COMPILER_ID:GNU,Clang,AppleClang>:-march=native>
                           ${SMOE_NATIVE_AVX512_FLAGS})
  endif()
endfunction()

# smoe_test_directory_options(): for the directories of smoe's tests. A Release build compiles its tests at -O2,
# not -O3: g++ 12 spends about twice as long on a template-heavy test unit at -O3 (test_forward_alloc: 81 s
# against 37 s of CPU), which is most of CI's time, and the kernels are explicit SIMD either way. Benches,
# examples and the shared HfMoeLayer instance keep -O3: the demo's and the benches' figures are measured there.
macro(smoe_test_directory_options)
  add_compile_options($<$<AND:$<CONFIG:Release>,$<COMPILE_LANGUAGE:CXX>>:-O2>)
endmacro()

# smoe_use_hf_moe_instance(<target>): a target whose units include io/hf_moe.hpp links HfMoeLayer's code,
# compiled once (cmake/smoe_hf_moe_instance.cpp, ~1 min), and its units see only the extern template.
# An OBJECT library's objects reach only the targets that link it directly: call this on the executable.
function(smoe_use_hf_moe_instance target)
  if(NOT TARGET smoe_hf_moe_instance)
    add_library(smoe_hf_moe_instance OBJECT ${PROJECT_SOURCE_DIR}/cmake/smoe_hf_moe_instance.cpp)
    # Shared with the demo and the benches: none of the calling directory's options (the tests' -O2).
    set_property(TARGET smoe_hf_moe_instance PROPERTY COMPILE_OPTIONS "")
    target_link_libraries(smoe_hf_moe_instance PUBLIC smoe::smoe nlohmann_json::nlohmann_json)
    target_compile_definitions(smoe_hf_moe_instance PUBLIC SMOE_HF_MOE_EXTERN)
    smoe_target_options(smoe_hf_moe_instance)
  endif()
  target_link_libraries(${target} PRIVATE smoe_hf_moe_instance)
endfunction()
