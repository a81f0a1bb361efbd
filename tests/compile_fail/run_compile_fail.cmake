# cmake -D SOURCE=<file.cpp> -D FLAGS_FILE=<compile_fail_flags.cmake> -P run_compile_fail.cmake
#
# Passes only if SOURCE fails to compile AND the diagnostics contain the message its first line
# promises:
#   // expect: <literal text>          (substring match)
#   // expect-regex: <cmake regex>     (regex match)
# Runs the compiler with -fsyntax-only: every concept/static_assert fires during semantic analysis.
cmake_minimum_required(VERSION 3.25)
include("${FLAGS_FILE}")

file(STRINGS "${SOURCE}" first_line LIMIT_COUNT 1)
if(first_line MATCHES "^// expect-regex: (.+)$")
  set(expect_regex "${CMAKE_MATCH_1}")
elseif(first_line MATCHES "^// expect: (.+)$")
  set(expect_text "${CMAKE_MATCH_1}")
else()
  message(FATAL_ERROR "${SOURCE}: the first line must be `// expect: <message>` or "
                      "`// expect-regex: <regex>`, found: ${first_line}")
endif()

set(args ${STD_FLAG} -fsyntax-only)
foreach(dir IN LISTS INCLUDE_DIRS)
  # Like CMake itself, never name the compiler's implicit directories (xsimd's is /usr/include):
  # `-I/usr/include` reorders the search and breaks libstdc++'s #include_next <stdlib.h>.
  if(NOT dir IN_LIST IMPLICIT_INCLUDE_DIRS)
    list(APPEND args "-I${dir}")
  endif()
endforeach()
foreach(def IN LISTS DEFINES)
  list(APPEND args "-D${def}")
endforeach()

execute_process(COMMAND "${CXX}" ${args} "${SOURCE}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(diagnostics "${out}${err}")

string(JOIN " " command_line "${CXX}" ${args} "${SOURCE}")
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must not.\ncommand: ${command_line}")
endif()
if(DEFINED expect_regex)
  if(NOT diagnostics MATCHES "${expect_regex}")
    message(FATAL_ERROR "${SOURCE} failed to compile, but not with a message matching\n"
                        "  ${expect_regex}\ncompiler output:\n${diagnostics}")
  endif()
else()
  string(FIND "${diagnostics}" "${expect_text}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "${SOURCE} failed to compile, but its output lacks\n"
                        "  ${expect_text}\ncompiler output:\n${diagnostics}")
  endif()
endif()
message(STATUS "${SOURCE}: fails to compile as expected")
