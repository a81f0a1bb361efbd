# smoe-run's code but main.cpp (and pack_main.cpp): the one list that examples/CMakeLists.txt (smoe-run,
# smoe-pack and the config replay link it as objects) and tests/fuzz (the libFuzzer target compiles its own
# instrumented copy) both build, so a new case file cannot be added to one and missed by the other.
set(smoe_run_sources
  ${CMAKE_CURRENT_LIST_DIR}/run_case.cpp
  ${CMAKE_CURRENT_LIST_DIR}/case_io.cpp
  ${CMAKE_CURRENT_LIST_DIR}/full_layer.cpp
  ${CMAKE_CURRENT_LIST_DIR}/router_case.cpp
  ${CMAKE_CURRENT_LIST_DIR}/lora_case.cpp
  ${CMAKE_CURRENT_LIST_DIR}/mofme_case.cpp
  ${CMAKE_CURRENT_LIST_DIR}/research_case.cpp)
