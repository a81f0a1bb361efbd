# Debian 12's g++ 12.2 miscompiles constant vectors whenever AVX-512 is enabled (shared/toolchain.md §7;
# cmake/smoe_avx512_probe.cpp has the patterns): {1, 1, 0, 0} is stored as {1, 1, 1, 1}. The SLP
# vectoriser is the culprit, and turning it off (or capping the vector width at 128 bits) avoids it.
# Every unit that smoe compiles with AVX-512 flags (its tests, benches and examples under -march=native
# on an AVX-512 CPU, tests/isa's AVX-512 object, smoe_dispatch_sources' avx512bw object, in smoe's
# build and in every consumer's) gets the flags this file finds.
#
#   smoe_avx512_codegen_flags(<out>)  the workaround flags for this compiler ("" when it is not affected)
#   smoe_native_has_avx512(<out>)     TRUE when -march=native turns AVX-512F on here
#   smoe_avx512_workaround(<target>)  for an engine's own targets built with AVX-512 flags
#
# The verdict: the probe is compiled to assembly with AVX-512 flags, and a vpbroadcast into a ymm/zmm
# register there is the defect (the patterns' lanes differ, so a correct compile never broadcasts one
# value over the register); this works on a build machine without AVX-512. Where the CPU has AVX-512,
# the probe also runs, and the workaround must give the right values or configuration stops. The
# verdict is cached per compiler (SMOE_AVX512_CODEGEN_*).
include_guard(GLOBAL)

set_property(GLOBAL PROPERTY SMOE_AVX512_PROBE_SOURCE "${CMAKE_CURRENT_LIST_DIR}/smoe_avx512_probe.cpp")

# Flag sets the probe compiles with (the dispatcher's level, the explicit -m list of tests/isa) and the
# workaround candidates, cheapest first (loops still vectorise at full width without SLP). A macro, not
# file-scope variables: a consumer calls these functions from directories that never saw this file's scope.
macro(_smoe_avx512_lists)
  set(_smoe_avx512_probe_flag_sets "-march=x86-64-v4" "-mavx512f -mavx512cd -mavx512dq -mavx512bw -mavx512vl -mfma -mavx2")
  set(_smoe_avx512_workarounds "-fno-tree-slp-vectorize" "-mprefer-vector-width=128")
endmacro()

# _smoe_avx512_compile(<ok_var> <output> <flags...>): compiles the probe with the flags (-S when the output
# ends in .s, else an executable with its main); <ok_var> FALSE when the compiler rejects the flags.
function(_smoe_avx512_compile ok_var output)
  get_property(src GLOBAL PROPERTY SMOE_AVX512_PROBE_SOURCE)
  if(output MATCHES "\\.s$")
    set(mode -S)
  else()
    set(mode -DSMOE_PROBE_MAIN)
  endif()
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -std=c++20 ${ARGN} ${mode} ${src} -o ${output}
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(rc EQUAL 0)
    set(${ok_var} TRUE PARENT_SCOPE)
  else()
    set(${ok_var} FALSE PARENT_SCOPE)
  endif()
endfunction()

# _smoe_avx512_broadcasts(<out> <extra flags>): ymm/zmm broadcasts in the probe's assembly, summed over
# the flag sets and -O2/-O3; -1 when no flag set compiles (a compiler without AVX-512 support).
function(_smoe_avx512_broadcasts out extra)
  set(dir "${CMAKE_BINARY_DIR}/CMakeFiles/smoe_avx512_probe")
  file(MAKE_DIRECTORY "${dir}")
  separate_arguments(extra_list UNIX_COMMAND "${extra}")
  set(total 0)
  set(compiled FALSE)
  _smoe_avx512_lists()
  set(sets ${_smoe_avx512_probe_flag_sets})
  smoe_native_has_avx512(native)
  if(native)
    list(APPEND sets "-march=native")  # what smoe's own targets get here
  endif()
  foreach(fs IN LISTS sets)
    separate_arguments(flags UNIX_COMMAND "${fs}")
    foreach(opt -O2 -O3)
      _smoe_avx512_compile(ok "${dir}/probe.s" ${opt} ${flags} ${extra_list})
      if(ok)
        set(compiled TRUE)
        file(STRINGS "${dir}/probe.s" hits REGEX "vpbroadcast[bwdq]?[ \t]+[^,]+,[ \t]*%[yz]mm")
        list(LENGTH hits n)
        math(EXPR total "${total} + ${n}")
      endif()
    endforeach()
  endforeach()
  if(NOT compiled)
    set(total -1)
  endif()
  set(${out} ${total} PARENT_SCOPE)
endfunction()

# _smoe_host_has_avx512(<out>): the CPU running cmake has AVX-512F and VL (the probe's instructions).
function(_smoe_host_has_avx512 out)
  set(${out} FALSE PARENT_SCOPE)
  set(dir "${CMAKE_BINARY_DIR}/CMakeFiles/smoe_avx512_probe")
  file(WRITE "${dir}/cpu.cpp" "int main() { __builtin_cpu_init(); "
             "return __builtin_cpu_supports(\"avx512f\") && __builtin_cpu_supports(\"avx512vl\") ? 0 : 1; }\n")
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} "${dir}/cpu.cpp" -o "${dir}/cpu" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(rc EQUAL 0)
    execute_process(COMMAND "${dir}/cpu" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
    if(rc EQUAL 0)
      set(${out} TRUE PARENT_SCOPE)
    endif()
  endif()
endfunction()

# _smoe_avx512_wrong_values(<out> <extra flags>): runs the probe built with -O3, the first flag set and
# the extras; the number of wrong values it counted.
function(_smoe_avx512_wrong_values out extra)
  set(dir "${CMAKE_BINARY_DIR}/CMakeFiles/smoe_avx512_probe")
  separate_arguments(extra_list UNIX_COMMAND "${extra}")
  _smoe_avx512_lists()
  list(GET _smoe_avx512_probe_flag_sets 0 fs)
  separate_arguments(flags UNIX_COMMAND "${fs}")
  _smoe_avx512_compile(ok "${dir}/probe" -O3 ${flags} ${extra_list})
  if(NOT ok)
    set(${out} "not built" PARENT_SCOPE)
    return()
  endif()
  execute_process(COMMAND "${dir}/probe" RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  set(${out} "${rc}" PARENT_SCOPE)
endfunction()

function(smoe_avx512_codegen_flags out)
  set(key "${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION} ${CMAKE_CXX_COMPILER}")
  if(NOT "${SMOE_AVX512_CODEGEN_KEY}" STREQUAL "${key}")
    set(flags "")
    if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$" OR NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
      set(verdict "not probed (x86-64 with GNU or Clang only)")
    else()
      _smoe_avx512_broadcasts(bad "")
      _smoe_host_has_avx512(host)
      set(wrong_plain "")
      if(host)
        _smoe_avx512_wrong_values(wrong_plain "")
      endif()
      if(bad EQUAL -1)
        set(verdict "not probed (the compiler takes no AVX-512 flags)")
      elseif(bad EQUAL 0 AND (NOT host OR wrong_plain STREQUAL "0"))
        set(verdict "correct constant vectors under AVX-512 flags (assembly probe; no AVX-512 here to run it)")
        if(host)
          set(verdict "correct constant vectors under AVX-512 flags (assembly probe and a run on this CPU)")
        endif()
      else()
        _smoe_avx512_lists()
        foreach(candidate IN LISTS _smoe_avx512_workarounds)
          _smoe_avx512_broadcasts(still "${candidate}")
          set(wrong "0")
          if(host)
            _smoe_avx512_wrong_values(wrong "${candidate}")
          endif()
          if(still EQUAL 0 AND wrong STREQUAL "0")
            set(flags "${candidate}")
            break()
          endif()
        endforeach()
        if(flags STREQUAL "")
          message(FATAL_ERROR "smoe: ${CMAKE_CXX_COMPILER} (${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}) "
            "miscompiles constant vectors under AVX-512 flags (cmake/smoe_avx512_probe.cpp) and none of "
            "'${_smoe_avx512_workarounds}' fixes it; use another compiler (clang 14 is correct)")
        endif()
        set(verdict "MISCOMPILES constant vectors under AVX-512 flags (${bad} wrong broadcasts in the probe's assembly")
        if(host)
          string(APPEND verdict ", ${wrong_plain} wrong values when run on this CPU")
        endif()
        string(APPEND verdict "); every AVX-512 unit gets ${flags}")
      endif()
    endif()
    set(SMOE_AVX512_CODEGEN_KEY "${key}" CACHE INTERNAL "compiler the AVX-512 codegen verdict is for")
    set(SMOE_AVX512_CODEGEN_FLAGS "${flags}" CACHE INTERNAL "workaround flags for units with AVX-512 flags")
    set(SMOE_AVX512_CODEGEN_VERDICT "${verdict}" CACHE INTERNAL "the AVX-512 codegen probe's verdict")
    message(STATUS "smoe: ${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER_VERSION}: ${verdict}")
  endif()
  separate_arguments(list UNIX_COMMAND "${SMOE_AVX512_CODEGEN_FLAGS}")
  set(${out} "${list}" PARENT_SCOPE)
endfunction()

function(smoe_native_has_avx512 out)
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -march=native -dM -E -x c++ /dev/null
                  OUTPUT_VARIABLE macros RESULT_VARIABLE rc ERROR_QUIET)
  if(rc EQUAL 0 AND macros MATCHES "#define __AVX512F__ 1")
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

function(smoe_avx512_workaround target)
  smoe_avx512_codegen_flags(flags)
  if(flags)
    target_compile_options(${target} PRIVATE ${flags})
  endif()
endfunction()
