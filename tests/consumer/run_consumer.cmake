# cmake -D SOURCE_DIR=... -D BINARY_DIR=... -D GENERATOR=... -D CXX_COMPILER=... [-D MAKE_PROGRAM=...]
#       [-D CONSUMER_ARGS=-DVAR=value] [-D INSTALL_FROM=<smoe build dir> -D INSTALL_PREFIX=<dir>]
#       -P run_consumer.cmake
#
# Builds the consumer project in SOURCE_DIR from scratch and runs its `consumer` executable, which must
# exit 0 and print "consumer ok". With INSTALL_FROM, first installs that smoe build into a fresh
# INSTALL_PREFIX and points the consumer at that prefix (and nowhere else).
cmake_minimum_required(VERSION 3.25)

function(run step)
  string(JOIN " " command_line ${ARGN})
  message(STATUS "[${step}] ${command_line}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer step '${step}' failed (${rc})")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

# No build type (no -O): the test is about packaging (targets, include paths, the exported dispatch
# function), and unoptimised units build in half the time (each project ~27 s of CPU instead of ~55).
set(configure_args -G "${GENERATOR}" -D CMAKE_BUILD_TYPE= -D "CMAKE_CXX_COMPILER=${CXX_COMPILER}")
if(MAKE_PROGRAM)
  list(APPEND configure_args -D "CMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(DEFINED CONSUMER_ARGS)
  list(APPEND configure_args ${CONSUMER_ARGS})
endif()

if(DEFINED INSTALL_FROM)
  file(REMOVE_RECURSE "${INSTALL_PREFIX}")
  run(install "${CMAKE_COMMAND}" --install "${INSTALL_FROM}" --prefix "${INSTALL_PREFIX}")
  # Only the fresh prefix: no user or system package registry may supply smoe instead.
  list(APPEND configure_args
    -D "CMAKE_PREFIX_PATH=${INSTALL_PREFIX}"
    -D "SMOE_EXPECTED_DIR=${INSTALL_PREFIX}/share/cmake/smoe"
    -D CMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    -D CMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
endif()

file(REMOVE_RECURSE "${BINARY_DIR}")
run(configure "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BINARY_DIR}" ${configure_args})
run(build "${CMAKE_COMMAND}" --build "${BINARY_DIR}")
run(run "${BINARY_DIR}/consumer")
if(NOT last_output MATCHES "consumer ok")
  message(FATAL_ERROR "the consumer ran but did not print 'consumer ok'")
endif()
