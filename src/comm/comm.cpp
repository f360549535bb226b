// The parts of comm.h every build has: element sizes, the single-process Comm, the launcher's
// environment, the timeout setting, and the errors of builds without MPI or NCCL.

#include "comm/comm.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace moerun::comm {

using detail::cat;

size_t type_bytes(Type t) noexcept {
  switch (t) {
    case Type::f32: return 4;
    case Type::bf16: return 2;
    case Type::i32: return 4;
    case Type::u8: return 1;
  }
  return 0;
}

// ----- one process: every collective is the identity ---------------------------------------------

namespace {

class SingleComm final : public Comm {
 public:
  int rank() const noexcept override { return 0; }
  int size() const noexcept override { return 1; }
  const char* name() const noexcept override { return "single"; }

  void all_reduce_sum(void*, size_t count, Type type, void*) override { count_call(count * type_bytes(type)); }
  void all_gather(const void* send, void* recv, size_t count, Type type, void*) override {
    const size_t bytes = count * type_bytes(type);
    if (bytes && send != recv) std::memmove(recv, send, bytes);
    count_call(bytes);
  }
  void broadcast(void*, size_t count, Type type, int root, void*) override {
    check_root(root, "broadcast");
    count_call(count * type_bytes(type));
  }
  void barrier() override { count_call(0); }
  void broadcast_idle(void*, size_t bytes, int root) override {
    check_root(root, "broadcast_idle");
    count_call(bytes);
  }

 private:
  void count_call(size_t bytes) noexcept {
    stats_.calls += 1;
    stats_.bytes += bytes;
  }
  // A root other than 0 is a bug in the caller that a multi-rank run would also hit: say so here.
  static void check_root(int root, const char* op) {
    if (root != 0) throw CommError("rank 0 of 1", cat(op, " from root ", root, ": no such rank"));
  }
};

// A launcher variable as a non-negative int, -1 when unset.
int env_int(const char* var) {
  const char* s = std::getenv(var);
  if (!s) return -1;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (end == s || *end != '\0' || errno == ERANGE || v < 0 || v > 1'000'000)
    throw Error(var, cat("expected a process count or rank from the MPI launcher, found '", s, "'"));
  return static_cast<int>(v);
}

}  // namespace

std::shared_ptr<Comm> make_single() { return std::make_shared<SingleComm>(); }

// ----- the launcher's environment --------------------------------------------------------------
// Open MPI's mpirun sets OMPI_COMM_WORLD_{SIZE,RANK} (and PMIX_RANK); MPICH's hydra and Slurm's PMI
// set PMI_{SIZE,RANK}; Slurm's PMIx plugin sets PMIX_RANK alone (no size: 1 until MPI is up).

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"})
    if (std::getenv(var)) return true;
  return false;
}

int launch_size() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    const int n = env_int(var);
    if (n == 0) throw Error(var, "the MPI launcher says the world has 0 processes");
    if (n > 0) return n;
  }
  return 1;
}

int launch_rank() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"}) {
    const int r = env_int(var);
    if (r < 0) continue;
    const int n = launch_size();
    if (n > 1 && r >= n) throw Error(var, cat("rank ", r, " is outside the world of ", n, " processes"));
    return r;
  }
  return 0;
}

// ----- what this build has -----------------------------------------------------------------------

bool have_mpi() noexcept {
#ifdef MOERUN_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool have_nccl() noexcept {
#ifdef MOERUN_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

double collective_timeout_seconds() {
  const char* s = std::getenv("MOERUN_COMM_TIMEOUT");
  if (!s) return 60.0;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s, &end);
  if (end == s || *end != '\0' || errno == ERANGE || !std::isfinite(v) || v <= 0)
    throw Error("MOERUN_COMM_TIMEOUT", cat("expected a positive number of seconds, found '", s, "'"));
  return v;
}

#ifndef MOERUN_HAVE_MPI
std::shared_ptr<Comm> mpi_world() {
  throw Error("comm", "this moerun was built without MPI: install libopenmpi-dev and reconfigure with -DMOERUN_MPI=ON");
}
void abort_world(int) noexcept {}
#endif

#ifndef MOERUN_HAVE_NCCL
std::shared_ptr<Comm> make_nccl(Comm&, int) {
  throw Error("comm",
              "this moerun was built without NCCL: it needs the CUDA backend and NCCL (nccl.h and libnccl in the "
              "CUDA toolkit); reconfigure with -DMOERUN_CUDA=ON -DMOERUN_NCCL=ON");
}
#endif

}  // namespace moerun::comm
