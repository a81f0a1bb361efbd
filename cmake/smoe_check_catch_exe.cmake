# cmake -D EXE=<catch2 v2 executable> [-D DISCOVERY_FILE=<dir>/<exe>_tests-<hash>.cmake] -P smoe_check_catch_exe.cmake
#
# Fails unless EXE starts, lists at least one test case, and (when DISCOVERY_FILE is given) the
# ctest file written by catch_discover_tests registered exactly that many tests. See
# tests/CMakeLists.txt for why this exists.
cmake_minimum_required(VERSION 3.25)

if(NOT EXISTS "${EXE}")
  message(FATAL_ERROR "test executable '${EXE}' does not exist (did the build fail?)")
endif()

execute_process(COMMAND "${EXE}" --list-test-names-only
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
# Catch2 v2 exits with the number of listed cases (mod 256); a signal or a loader failure gives a
# text result or 126/127 with nothing listed.
if(NOT rc MATCHES "^[0-9]+$")
  message(FATAL_ERROR "'${EXE} --list-test-names-only' did not exit normally: ${rc}\n${out}${err}")
endif()

string(REGEX REPLACE "\r?\n$" "" out "${out}")
set(listed 0)
if(NOT out STREQUAL "")
  string(REGEX REPLACE "\r?\n" ";" names "${out}")
  list(LENGTH names listed)
endif()
if(listed EQUAL 0)
  message(FATAL_ERROR "'${EXE}' lists no test case (exit code ${rc}); it could not start or is empty.\n${err}")
endif()
math(EXPR expected_rc "${listed} % 256")
if(NOT rc EQUAL expected_rc)
  message(FATAL_ERROR "'${EXE}' listed ${listed} test cases but exited with ${rc}.\n${err}")
endif()

if(DEFINED DISCOVERY_FILE)
  if(NOT EXISTS "${DISCOVERY_FILE}")
    message(FATAL_ERROR "catch_discover_tests wrote no '${DISCOVERY_FILE}'; rebuild the target.")
  endif()
  file(STRINGS "${DISCOVERY_FILE}" registered REGEX "^add_test\\(")
  list(LENGTH registered n_registered)
  if(NOT n_registered EQUAL listed)
    message(FATAL_ERROR "'${EXE}' lists ${listed} test cases but ctest discovery registered "
                        "${n_registered}; rebuild the target to rediscover.")
  endif()
endif()
message(STATUS "'${EXE}': ${listed} test cases, all registered with ctest")
