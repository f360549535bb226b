# Comm suites (included from tests/CMakeLists.txt): comm_tests runs once as one process (the single
# Comm, the launcher's environment, the timeout setting) and, with MPI, under mpirun with 2 and 3
# ranks (the MPI Comm's collectives; every rank checks, rank 0 prints).

# The environment under which Open MPI's mpirun runs multi-rank tests on one machine, also in a
# container; Python drivers that call mpirun can reuse the list.
set(MOERUN_MPI_TEST_ENV
  # Containers often run as root, which mpirun refuses without both of these.
  OMPI_ALLOW_RUN_AS_ROOT=1
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  # More ranks than cores (CI machines have 2), also for drivers that do not pass --oversubscribe.
  OMPI_MCA_rmaps_base_oversubscribe=1
  # Shared-memory transfers copy through a buffer: the cross-process copy (CMA) needs ptrace rights
  # that unprivileged containers lack, and fails there with "Read -1, expected ..." at large messages.
  OMPI_MCA_btl_vader_single_copy_mechanism=none
  # One machine: the TCP paths (the launcher's out-of-band channel and the TCP transport, if picked)
  # stay on loopback rather than probing container interfaces that may not route.
  OMPI_MCA_btl_tcp_if_include=lo
  OMPI_MCA_oob_tcp_if_include=lo)
if(MOERUN_SANITIZE)
  # Open MPI keeps allocations to exit (its own and hwloc's): LeakSanitizer would fail every rank.
  list(APPEND MOERUN_MPI_TEST_ENV ASAN_OPTIONS=detect_leaks=0)
endif()

# moerun_add_mpi_test(NAME <ctest name> NP <ranks> COMMAND <target or executable> [ARGS ...] [TIMEOUT <s>])
# A ctest that runs `mpiexec --oversubscribe -np <ranks> <command> <args>` with MOERUN_MPI_TEST_ENV;
# it fails when any rank fails. Only call it when MOERUN_HAVE_MPI.
function(moerun_add_mpi_test)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "NAME;NP;COMMAND;TIMEOUT" "ARGS")
  if(NOT arg_NAME OR NOT arg_NP OR NOT arg_COMMAND)
    message(FATAL_ERROR "moerun_add_mpi_test needs NAME, NP and COMMAND")
  endif()
  if(NOT arg_TIMEOUT)
    set(arg_TIMEOUT 300)
  endif()
  set(exe ${arg_COMMAND})
  if(TARGET ${arg_COMMAND})
    set(exe $<TARGET_FILE:${arg_COMMAND}>)
  endif()
  add_test(NAME ${arg_NAME}
           COMMAND ${MPIEXEC_EXECUTABLE} --oversubscribe ${MPIEXEC_NUMPROC_FLAG} ${arg_NP} ${MPIEXEC_PREFLAGS}
                   ${exe} ${MPIEXEC_POSTFLAGS} ${arg_ARGS})
  set_tests_properties(${arg_NAME} PROPERTIES
    TIMEOUT ${arg_TIMEOUT}
    ENVIRONMENT "${MOERUN_MPI_TEST_ENV}"
    PROCESSORS ${arg_NP})
endfunction()

# Not moerun_add_test: gtest_discover_tests would run each test as its own process without mpirun.
add_executable(comm_tests comm/comm_test.cpp)
target_link_libraries(comm_tests PRIVATE moerun_test_support moerun_warnings GTest::gtest)
add_test(NAME comm_tests COMMAND comm_tests)
set_tests_properties(comm_tests PROPERTIES TIMEOUT 300)
if(MOERUN_HAVE_MPI)
  moerun_add_mpi_test(NAME comm_tests_np2 NP 2 COMMAND comm_tests)
  moerun_add_mpi_test(NAME comm_tests_np3 NP 3 COMMAND comm_tests)
endif()
