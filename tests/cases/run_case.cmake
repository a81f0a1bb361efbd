# ctest driver for one case folder: smoe-run CASE OUT [--layer N], then compare_case CASE OUT.
# -D SMOE_RUN=... -D COMPARE=... -D CASE=... -D OUT=... [-D LAYER=N]
set(args "${CASE}" "${OUT}")
if(DEFINED LAYER AND NOT LAYER STREQUAL "")
  list(APPEND args --layer ${LAYER})
endif()
execute_process(COMMAND "${SMOE_RUN}" ${args} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "smoe-run failed (${rc}) on ${CASE}")
endif()
execute_process(COMMAND "${COMPARE}" "${CASE}" "${OUT}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "outputs differ from expected.safetensors for ${CASE}")
endif()
