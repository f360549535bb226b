# Distributed engines (issue 17): parallel_tests compares every golden model split over 2 and 3
# ranks (ep, tp, ep+tp) with one process; it runs under mpirun (moerun_add_mpi_test, from
# tests/comm/tests.cmake) and once plainly, where every test skips.
add_executable(parallel_tests parallel/parallel_test.cpp)
target_link_libraries(parallel_tests PRIVATE moerun_test_support moerun_warnings GTest::gtest)
target_compile_definitions(parallel_tests PRIVATE MOERUN_TEST_DATA="${CMAKE_CURRENT_SOURCE_DIR}/data")
add_test(NAME parallel_tests COMMAND parallel_tests)
if(MOERUN_HAVE_MPI)
  moerun_add_mpi_test(NAME parallel_tests_np2 NP 2 COMMAND parallel_tests TIMEOUT 600)
  moerun_add_mpi_test(NAME parallel_tests_np3 NP 3 COMMAND parallel_tests TIMEOUT 600)
endif()

# The command under mpirun: print once, same answers, a killed rank stops the job, per-rank memory,
# per-rank plans (tests/parallel/parallel_cli.py; skipped, exit 77, without mpiexec).
find_package(Python3 COMPONENTS Interpreter)
if(Python3_FOUND AND MOERUN_HAVE_MPI AND NOT MOERUN_SANITIZE)
  add_test(NAME parallel_cli
           COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_SOURCE_DIR}/parallel/parallel_cli.py --moerun $<TARGET_FILE:moerun_cli>
                   --mpiexec ${MPIEXEC_EXECUTABLE} --model ${PROJECT_SOURCE_DIR}/models/default
                   --golden ${CMAKE_CURRENT_SOURCE_DIR}/data/golden --configs ${CMAKE_CURRENT_SOURCE_DIR}/data/configs)
  set_tests_properties(parallel_cli PROPERTIES TIMEOUT 900 SKIP_RETURN_CODE 77 ENVIRONMENT "${MOERUN_MPI_TEST_ENV}")
endif()
