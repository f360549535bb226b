// NcclComm: the collectives of comm.h over NCCL, on device buffers and a CUDA stream (CUDA builds
// that found NCCL). The ranks are those of the bootstrap Comm (MPI): rank 0's NCCL unique id travels
// to the others over it, and barrier and broadcast_idle (host bytes) go through it.
//
// Collectives only enqueue on the stream; synchronize(stream) is where a rank waits, so that is where
// the deadline is: it polls the stream and NCCL's asynchronous error, and on a timeout or an error
// aborts the communicator (ncclCommAbort stops its kernels, which would otherwise spin forever waiting
// for a dead peer). After any error the Comm is unusable: every later call throws CommError.

#include <cuda_runtime.h>
#include <nccl.h>
#include <sched.h>

#include <algorithm>
#include <chrono>

#include "comm/comm.h"

#if NCCL_MAJOR < 2 || (NCCL_MAJOR == 2 && NCCL_MINOR < 10)
#error "moerun needs NCCL 2.10 or newer (bf16 reductions)"
#endif

namespace moerun::comm {
namespace {

using Clock = std::chrono::steady_clock;
using detail::cat;

ncclDataType_t nccl_type(Type t) {
  switch (t) {
    case Type::f32: return ncclFloat32;
    case Type::bf16: return ncclBfloat16;
    case Type::i32: return ncclInt32;
    case Type::u8: return ncclUint8;  // sums wrap modulo 256, as on MPI
  }
  return ncclFloat32;
}

cudaStream_t cuda_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

class NcclComm final : public Comm {
 public:
  // `bootstrap` must outlive this Comm (mpi_world() lives until exit).
  NcclComm(Comm& bootstrap, int device) : bootstrap_(bootstrap) {
    rank_ = bootstrap.rank();
    size_ = bootstrap.size();
    where_ = cat("rank ", rank_, " of ", size_, " (NCCL)");
    timeout_seconds_ = collective_timeout_seconds();
    if (bootstrap.device_buffers())
      throw CommError(where_, cat("the bootstrap Comm must take host buffers; ", bootstrap.name(), " does not"));

    // Every rank says whether it is ready before ncclCommInitRank, which would otherwise wait for a
    // rank that already failed until mpirun stops the job.
    ncclUniqueId id{};
    std::string problem;
    if (const cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
      problem = cat("cudaSetDevice(", device, ") failed: ", cudaGetErrorString(e));
    } else if (rank_ == 0) {
      if (const ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess)
        problem = cat("ncclGetUniqueId failed: ", ncclGetErrorString(r));
    }
    int32_t failures = problem.empty() ? 0 : 1;
    bootstrap.all_reduce_sum(&failures, 1, Type::i32);
    if (!problem.empty()) throw CommError(where_, problem);
    if (failures > 0)
      throw CommError(where_, cat(failures, " other rank(s) could not prepare NCCL (their errors say why)"));

    bootstrap.broadcast(&id, sizeof id, Type::u8, 0);
    if (const ncclResult_t r = ncclCommInitRank(&comm_, size_, id, rank_); r != ncclSuccess) {
      comm_ = nullptr;
      throw CommError(where_, cat("ncclCommInitRank on device ", device, " failed: ", ncclGetErrorString(r)));
    }
  }

  ~NcclComm() override {
    // Destroy waits for the communicator's work to finish; a broken one was aborted already.
    if (comm_) ncclCommDestroy(comm_);
  }

  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  const char* name() const noexcept override { return "nccl"; }
  bool device_buffers() const noexcept override { return true; }
  int local_rank() const noexcept override { return bootstrap_.local_rank(); }
  int local_size() const noexcept override { return bootstrap_.local_size(); }

  void all_reduce_sum(void* data, size_t count, Type type, void* stream) override {
    const size_t bytes = count * type_bytes(type);
    usable("all_reduce", bytes);
    check(ncclAllReduce(data, data, count, nccl_type(type), ncclSum, comm_, cuda_stream(stream)), "all_reduce", bytes);
    count_call(bytes);
  }

  void all_gather(const void* send, void* recv, size_t count, Type type, void* stream) override {
    const size_t bytes = count * type_bytes(type);
    usable("all_gather", bytes);
    check(ncclAllGather(send, recv, count, nccl_type(type), comm_, cuda_stream(stream)), "all_gather", bytes);
    count_call(bytes);
  }

  void broadcast(void* data, size_t count, Type type, int root, void* stream) override {
    const size_t bytes = count * type_bytes(type);
    usable("broadcast", bytes);
    if (root < 0 || root >= size_) throw CommError(where_, cat("broadcast from root ", root, ": no such rank"));
    check(ncclBroadcast(data, data, count, nccl_type(type), root, comm_, cuda_stream(stream)), "broadcast", bytes);
    count_call(bytes);
  }

  // The ranks' host threads meet; work already enqueued on streams is not waited for.
  void barrier() override {
    usable("barrier", 0);
    bootstrap_.barrier();
    stats_.calls += 1;
  }

  void broadcast_idle(void* data, size_t bytes, int root) override {
    usable("broadcast_idle", bytes);
    bootstrap_.broadcast_idle(data, bytes, root);
    count_call(bytes);
  }

  void synchronize(void* stream) override {
    usable("synchronize", 0);
    const auto t0 = Clock::now();
    const double limit = std::min(timeout_seconds_, 1e9);  // keeps the time_point from overflowing
    const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(limit));
    // Spin this many polls (cudaStreamQuery is ~1 us) before yielding the core between them.
    constexpr unsigned kSpins = 2000;
    for (unsigned i = 0;; ++i) {
      const cudaError_t e = cudaStreamQuery(cuda_stream(stream));
      if (e == cudaSuccess) break;
      if (e != cudaErrorNotReady) fail(cat("synchronize: the stream failed: ", cudaGetErrorString(e)));
      if (i % 16 == 15) {
        ncclResult_t async = ncclSuccess;
        const ncclResult_t r = ncclCommGetAsyncError(comm_, &async);
        if (r != ncclSuccess) fail(cat("synchronize: ncclCommGetAsyncError failed: ", ncclGetErrorString(r)));
        if (async != ncclSuccess && async != ncclInProgress)
          fail(cat("synchronize: NCCL failed: ", ncclGetErrorString(async)));
        if (Clock::now() >= deadline)
          fail(cat("synchronize waited ", timeout_seconds_,
                   " s for the stream's collectives (a peer may have died or be unreachable; "
                   "MOERUN_COMM_TIMEOUT sets the limit)"));
      }
      if (i >= kSpins) sched_yield();
    }
    stats_.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  }

 private:
  void count_call(size_t bytes) noexcept {
    stats_.calls += 1;
    stats_.bytes += bytes;
  }

  void usable(const char* op, size_t bytes) const {
    if (!comm_)
      throw CommError(where_, cat(what(op, bytes), ": the NCCL communicator was aborted after an earlier error"));
  }

  void check(ncclResult_t r, const char* op, size_t bytes) {
    if (r != ncclSuccess) fail(cat(what(op, bytes), " failed: ", ncclGetErrorString(r)));
  }

  // "all_reduce of 8192 bytes", or the bare name of an operation that moves no data.
  static std::string what(const char* op, size_t bytes) { return bytes ? cat(op, " of ", bytes, " bytes") : op; }

  // Aborts the communicator (its kernels stop; the peers see it fail) and throws.
  [[noreturn]] void fail(const std::string& what) {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    throw CommError(where_, what);
  }

  Comm& bootstrap_;
  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 1;
  std::string where_;  // "rank R of N (NCCL)", the start of every error
};

}  // namespace

std::shared_ptr<Comm> make_nccl(Comm& bootstrap, int device) { return std::make_shared<NcclComm>(bootstrap, device); }

}  // namespace moerun::comm
