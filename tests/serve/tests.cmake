# moerun serve: the wire format, the scheduler and the server in-process (GoogleTest), and the server end to end with the
# real `openai` Python client over loopback (tests/serve/serve_integration.py).
moerun_add_test(serve_tests serve/api_test.cpp serve/scheduler_test.cpp serve/server_test.cpp)
target_link_libraries(serve_tests PRIVATE moerun_serve PkgConfig::HTTPLIB)

find_package(Python3 COMPONENTS Interpreter)
if(Python3_FOUND)
  # Under the sanitizers (a Debug build) the model runs too slowly for the request deadlines: the
  # script exits 77 there, which ctest counts as skipped.
  set(serve_integration_flags "")
  if(MOERUN_SANITIZE)
    set(serve_integration_flags --sanitized)
  endif()
  add_test(NAME serve_integration
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/serve/serve_integration.py
                   --moerun $<TARGET_FILE:moerun_cli> --model ${PROJECT_SOURCE_DIR}/models/default ${serve_integration_flags})
  set_tests_properties(serve_integration PROPERTIES TIMEOUT 900 SKIP_RETURN_CODE 77)
endif()
