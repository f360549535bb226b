// MpiComm: the collectives of comm.h over Open MPI, on host buffers (built with -DMOERUN_MPI).
//
// Every collective is a non-blocking MPI call completed by polling MPI_Test against a deadline, so a
// peer that died or hangs becomes a CommError on this rank instead of a process stuck in MPI_Wait.
// The poll spins first (these calls sit in the decode step: microseconds matter) and then yields the
// core, which keeps oversubscribed runs (more ranks than cores) moving.

#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "comm/comm.h"

namespace moerun::comm {
namespace {

using Clock = std::chrono::steady_clock;
using detail::cat;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return cat("MPI error code ", code);
  return std::string(text, static_cast<size_t>(len));
}

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
  }
  return "an unknown thread level";
}

// ----- bf16 sums: MPI has no bf16 type --------------------------------------------------------
// A user op over MPI_UINT16_T: each pair is added in fp32 and rounded to nearest even, as
// cpu::f32_to_bf16 (kernels/cpu/convert.cpp) does; inlined here because it runs per element inside
// MPI's reduction. fp32 addition is commutative bit for bit, so with MPI combining the same partials
// in the same grouping on every rank (Open MPI's allreduce algorithms do; comm_tests checks it) every
// rank gets the same bits.

inline float bf16_to_f32(uint16_t h) noexcept {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) noexcept {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN stays NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}

MPI_Datatype mpi_type(Type t) {
  switch (t) {
    case Type::f32: return MPI_FLOAT;
    case Type::bf16: return MPI_UINT16_T;  // summed by bf16_sum
    case Type::i32: return MPI_INT32_T;
    case Type::u8: return MPI_UINT8_T;     // MPI_SUM wraps modulo 256, as C's unsigned arithmetic
  }
  return MPI_DATATYPE_NULL;
}

// A collective that timed out: MPI cannot cancel it, so it is kept and finished before the next one.
struct Unfinished {
  MPI_Request request = MPI_REQUEST_NULL;
  const char* op = "";
  size_t bytes = 0;
};

class MpiComm final : public Comm {
 public:
  explicit MpiComm(double timeout_seconds) {
    timeout_seconds_ = timeout_seconds;
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    // Errors come back as codes (turned into CommError) instead of MPI aborting the job from inside
    // a library call; set on our duplicate so nothing else in the process changes.
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    where_ = cat("rank ", rank_, " of ", size_);
    MPI_Comm local;
    check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local), "split by machine", 0);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
    check(MPI_Op_create(&bf16_sum, /*commute=*/1, &bf16_sum_), "create the bf16 sum", 0);
  }

  ~MpiComm() override {
    int finalised = 0;
    MPI_Finalized(&finalised);
    // With a collective unfinished the handles are in use; the process is on its way out anyway.
    if (finalised || unfinished()) return;
    if (bf16_sum_ != MPI_OP_NULL) MPI_Op_free(&bf16_sum_);
    MPI_Comm_free(&comm_);
  }

  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  const char* name() const noexcept override { return "mpi"; }
  int local_rank() const noexcept override { return local_rank_; }
  int local_size() const noexcept override { return local_size_; }
  bool unfinished() const noexcept { return late_.request != MPI_REQUEST_NULL; }

  void all_reduce_sum(void* data, size_t count, Type type, void*) override {
    const int n = mpi_count(count, "all_reduce");
    const MPI_Op op = type == Type::bf16 ? bf16_sum_ : MPI_SUM;
    run("all_reduce", count * type_bytes(type), [&](MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, data, n, mpi_type(type), op, comm_, r);
    });
  }

  void all_gather(const void* send, void* recv, size_t count, Type type, void*) override {
    const int n = mpi_count(count, "all_gather");
    const size_t bytes = count * type_bytes(type);
    // MPI forbids aliased buffers; a send block that is this rank's block of recv is MPI_IN_PLACE.
    const void* src = send == static_cast<const char*>(recv) + size_t(rank_) * bytes ? MPI_IN_PLACE : send;
    run("all_gather", bytes, [&](MPI_Request* r) {
      return MPI_Iallgather(src, n, mpi_type(type), recv, n, mpi_type(type), comm_, r);
    });
  }

  void broadcast(void* data, size_t count, Type type, int root, void*) override {
    const int n = mpi_count(count, "broadcast");
    check_root(root, "broadcast");
    run("broadcast", count * type_bytes(type),
        [&](MPI_Request* r) { return MPI_Ibcast(data, n, mpi_type(type), root, comm_, r); });
  }

  void barrier() override {
    run("barrier", 0, [&](MPI_Request* r) { return MPI_Ibarrier(comm_, r); });
  }

  // No deadline, and the poll sleeps (20 us doubling to 1 ms after a 2 ms spin): a worker may wait
  // here for hours while the leader's user thinks, and must not burn a core doing so.
  void broadcast_idle(void* data, size_t bytes, int root) override {
    const int n = mpi_count(bytes, "broadcast_idle");
    check_root(root, "broadcast_idle");
    finish_late("broadcast_idle");
    MPI_Request request = MPI_REQUEST_NULL;
    check(MPI_Ibcast(data, n, MPI_BYTE, root, comm_, &request), "broadcast_idle", bytes);
    // The leader's next decode step follows its sampling within a millisecond or two: spin that
    // long (yielding the core to anyone else who wants it), so a worker joins at once, then nap.
    const auto spin_until = Clock::now() + std::chrono::microseconds(2000);
    auto nap = std::chrono::microseconds(20);
    for (;;) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "broadcast_idle", bytes);
      if (done) break;
      if (Clock::now() < spin_until) {
        sched_yield();
        continue;
      }
      std::this_thread::sleep_for(nap);
      nap = std::min(nap * 2, std::chrono::microseconds(1000));
    }
    stats_.calls += 1;
    stats_.bytes += bytes;
  }

 private:
  // Starts a non-blocking collective and polls it to the end; the stats count the calls that finish.
  template <class Start>
  void run(const char* op, size_t bytes, Start start) {
    const auto t0 = Clock::now();
    finish_late(op);
    MPI_Request request = MPI_REQUEST_NULL;
    check(start(&request), op, bytes);
    if (!poll(request, op, bytes)) {
      late_ = {request, op, bytes};
      throw CommError(where_, cat(what(op, bytes), " waited ", timeout_seconds_,
                                  " s for the other ranks (one may have died or be unreachable; "
                                  "MOERUN_COMM_TIMEOUT sets the limit)"));
    }
    stats_.calls += 1;
    stats_.bytes += bytes;
    stats_.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  }

  // A collective that timed out earlier is still posted: the peers will join it (every rank calls the
  // same collectives in order), so it completes before a new one starts.
  void finish_late(const char* op) {
    if (!unfinished()) return;
    if (!poll(late_.request, late_.op, late_.bytes))
      throw CommError(where_, cat(op, ": the earlier ", what(late_.op, late_.bytes), " that timed out still waits "
                                  "for the other ranks after another ", timeout_seconds_, " s"));
    late_ = {};
  }

  // Polls `request` until it completes (true) or the deadline passes (false).
  bool poll(MPI_Request& request, const char* op, size_t bytes) {
    // Spin this many times (a few hundred microseconds) before yielding the core between polls.
    constexpr unsigned kSpins = 2000;
    const double limit = std::min(timeout_seconds_, 1e9);  // keeps the time_point from overflowing
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limit));
    for (unsigned i = 0;; ++i) {
      int done = 0;
      check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), op, bytes);
      if (done) return true;
      if (i < kSpins) cpu_relax();
      else sched_yield();
      if (i % 16 == 15 && Clock::now() >= deadline) return false;
    }
  }

  int mpi_count(size_t count, const char* op) const {
    if (count > size_t(INT_MAX))
      throw CommError(where_, cat(op, " of ", count, " elements: MPI counts are int; split it into calls of at most ",
                                  INT_MAX, " elements"));
    return static_cast<int>(count);
  }

  void check_root(int root, const char* op) const {
    if (root < 0 || root >= size_) throw CommError(where_, cat(op, " from root ", root, ": no such rank"));
  }

  void check(int rc, const char* op, size_t bytes) const {
    if (rc != MPI_SUCCESS) throw CommError(where_, cat(what(op, bytes), " failed: ", mpi_error_text(rc)));
  }

  // "all_reduce of 8192 bytes", or the bare name of an operation that moves no data.
  static std::string what(const char* op, size_t bytes) { return bytes ? cat(op, " of ", bytes, " bytes") : op; }

  MPI_Comm comm_ = MPI_COMM_NULL;  // our duplicate of MPI_COMM_WORLD
  MPI_Op bf16_sum_ = MPI_OP_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  std::string where_;  // "rank R of N", the start of every error
  Unfinished late_;
};

// ----- the process's one MPI world -------------------------------------------------------------
// MPI itself is process-wide state (initialised once, finalised once), so its Comm is too.

struct World {
  std::mutex mutex;
  std::shared_ptr<MpiComm> comm;
};

World& world() {
  static World w;
  return w;
}

// Registered after `world()`'s static exists, so it runs before that static is destroyed.
void finalize_at_exit() {
  World& w = world();
  std::lock_guard lock(w.mutex);
  // MPI_Finalize would wait for the peer that never joined the timed-out collective: leave MPI
  // unfinalised; mpirun sees the process end without it and stops the job.
  if (w.comm && w.comm->unfinished()) return;
  w.comm.reset();
  int finalised = 0;
  MPI_Finalized(&finalised);
  if (!finalised) MPI_Finalize();
}

void check_thread_level(int provided) {
  if (provided < MPI_THREAD_SERIALIZED)
    throw Error("MPI", cat("the MPI library provides ", thread_level_name(provided),
                           "; moerun needs MPI_THREAD_SERIALIZED (its steps run on whichever thread calls them, "
                           "one at a time)"));
}

}  // namespace

std::shared_ptr<Comm> mpi_world() {
  World& w = world();
  std::lock_guard lock(w.mutex);
  if (w.comm) return w.comm;
  const double timeout = collective_timeout_seconds();  // a malformed value fails before MPI starts
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (finalised) throw Error("MPI", "MPI was already finalised in this process and cannot start again");
  int provided = 0;
  if (initialised) {
    // Someone else started MPI (a host program): use it, and leave finalising to them.
    MPI_Query_thread(&provided);
  } else {
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) throw Error("MPI", cat("MPI_Init_thread failed: ", mpi_error_text(rc)));
    std::atexit(finalize_at_exit);
  }
  check_thread_level(provided);
  w.comm = std::make_shared<MpiComm>(timeout);
  return w.comm;
}

void abort_world(int code) noexcept {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (initialised && !finalised) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace moerun::comm
