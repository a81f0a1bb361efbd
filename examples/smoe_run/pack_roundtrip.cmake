# smoe-pack CASE then smoe-run CASE --packed FILE [--budget B] for several budgets: every output must be
# byte-identical to the plain smoe-run's (ctest example.smoe_pack_*). -DPACK, -DRUN, -DCASE, -DWORK,
# -DBUDGETS (comma-separated; "mapped" runs without --budget), -DEXTRA (smoe-run options, e.g. --layer 1).
file(MAKE_DIRECTORY ${WORK})
separate_arguments(extra UNIX_COMMAND "${EXTRA}")
execute_process(COMMAND ${RUN} ${CASE} ${WORK}/plain.safetensors ${extra} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${PACK} ${CASE} ${WORK}/experts.smoe ${extra} COMMAND_ERROR_IS_FATAL ANY)
string(REPLACE "," ";" budgets "${BUDGETS}")
foreach(b IN LISTS budgets)
  set(budget --budget ${b})
  if(b STREQUAL "mapped")
    set(budget)
  endif()
  execute_process(COMMAND ${RUN} ${CASE} ${WORK}/packed_${b}.safetensors ${extra} --packed ${WORK}/experts.smoe ${budget}
                  COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${WORK}/plain.safetensors ${WORK}/packed_${b}.safetensors
                  RESULT_VARIABLE differ)
  if(differ)
    message(FATAL_ERROR "smoe-run --packed ${budget}: output differs from the plain smoe-run")
  endif()
  message(STATUS "budget ${b}: identical")
endforeach()
