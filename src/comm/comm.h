#pragma once
// Comm: how the ranks of one distributed engine exchange partial results (docs/DESIGN.md, `comm`).
// The runtime alone uses it: the executor calls it where partial results meet (after attention with
// its heads split, after the experts split across ranks, the vocabulary-split LM head) and the
// engine broadcasts the leader's commands (token ids, session changes) over it.
//
// Three implementations: single (one process: every collective is a no-op or a copy), MPI (host
// buffers; Open MPI between CPU ranks, and the start-up of every distributed run) and NCCL (device
// buffers on the CUDA backend's stream; its unique id is broadcast over MPI). Without mpirun nothing
// here initialises MPI.
//
// Every rank calls the same collectives in the same order (the executor's step is the same code on
// every rank). A collective that waits longer than the timeout (a peer died, a machine became
// unreachable) throws CommError naming this rank and the operation; Open MPI's launcher also stops
// the whole job when one of its processes dies.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "moerun/error.h"

namespace moerun::comm {

enum class Type : uint8_t { f32, bf16, i32, u8 };
size_t type_bytes(Type t) noexcept;

// Counters of what a Comm moved (bytes this rank sent into collectives, their count, the wall time
// spent inside them), for bench's "bytes communicated per token" and "share of step time".
struct Stats {
  uint64_t calls = 0;
  uint64_t bytes = 0;     // payload bytes this rank contributed (count * element size per call)
  double seconds = 0.0;   // wall time inside collectives (for NCCL: inside the synchronising calls)
  // broadcast_idle counts in calls and bytes but not in seconds: its wait is idle time, not step time.
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  virtual const char* name() const noexcept = 0;  // "single", "mpi", "nccl"
  // True when the collectives take device pointers (NCCL); false: host pointers.
  virtual bool device_buffers() const noexcept { return false; }
  // Ranks sharing this machine and this rank's index among them (threads and GPUs are divided by it).
  virtual int local_rank() const noexcept { return 0; }
  virtual int local_size() const noexcept { return 1; }

  // In place: data[i] = sum over ranks of data[i], the same bits on every rank. `stream`: the CUDA
  // stream to order the operation on (NCCL; ignored by host implementations).
  virtual void all_reduce_sum(void* data, size_t count, Type type, void* stream = nullptr) = 0;
  // recv = the ranks' `send` blocks of `count` elements, in rank order (recv holds size() * count).
  virtual void all_gather(const void* send, void* recv, size_t count, Type type, void* stream = nullptr) = 0;
  // data on every rank = data on `root`.
  virtual void broadcast(void* data, size_t count, Type type, int root, void* stream = nullptr) = 0;
  virtual void barrier() = 0;
  // A broadcast of `bytes` host bytes from `root` that may wait for a long time (a worker waiting for
  // the leader's next command while the leader waits for its user): waits without burning a core and
  // without the timeout. Host buffers on every implementation.
  virtual void broadcast_idle(void* data, size_t bytes, int root) = 0;
  // Blocks until every operation this rank enqueued on `stream` is done (NCCL); no-op on the host.
  virtual void synchronize(void* stream) { (void)stream; }

  const Stats& stats() const noexcept { return stats_; }
  void reset_stats() noexcept { stats_ = {}; }

  // How long a collective waits for its peers: collective_timeout_seconds() when an MPI or NCCL Comm
  // is made (the environment is read once, not in the decode loop); tests and the CLI may change it.
  double timeout_seconds() const noexcept { return timeout_seconds_; }
  void set_timeout_seconds(double seconds) noexcept { timeout_seconds_ = seconds; }

 protected:
  Stats stats_;
  double timeout_seconds_ = 60.0;
};

// An error of a collective (timeout, a peer gone, an MPI or NCCL failure): the message names the rank.
// After an MPI timeout the operation is still under way (MPI cannot cancel a collective): its buffers
// must stay valid, the next collective on the Comm first waits for it (so a late peer catches up and
// the ranks stay in step), and a process that exits with it unfinished skips MPI_Finalize (which would
// wait for the missing peer; mpirun then ends the job). A NCCL Comm is aborted and unusable after one.
class CommError : public Error {
 public:
  using Error::Error;
};

// The single-process Comm: rank 0 of 1.
std::shared_ptr<Comm> make_single();

// True when this process was started by mpirun (or another MPI launcher): the launcher's
// environment (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMI_RANK, PMIX_RANK) is set, even for one process, so
// `mpirun -np 1` runs the MPI path too. Reads the environment only; never initialises MPI.
bool launched_by_mpi();
// The world's size and this process's rank from the launcher's environment (1 and 0 without one;
// the size is 1 too when only PMIX_RANK is set: Comm::size() is the truth once MPI is up). A malformed
// value is an Error naming the variable.
int launch_size();
int launch_rank();

// Whether this build has MPI (-DMOERUN_MPI) and NCCL (CUDA builds that found it).
bool have_mpi() noexcept;
bool have_nccl() noexcept;

// The MPI world of this process: MPI is initialised on the first call (and finalised at exit).
// Throws Error when the build has no MPI ("built without MPI: reconfigure with -DMOERUN_MPI=ON").
// Every call returns the same Comm.
std::shared_ptr<Comm> mpi_world();

// A NCCL communicator over the ranks of `bootstrap` (an MPI Comm: the unique id travels over it),
// on CUDA device `device` (the caller has made it current). Throws Error without NCCL.
std::shared_ptr<Comm> make_nccl(Comm& bootstrap, int device);

// Ends every rank of the MPI world at once (MPI_Abort) when MPI was initialised; returns otherwise.
void abort_world(int code) noexcept;

// How long a collective may wait for its peers before it gives up (seconds): MOERUN_COMM_TIMEOUT
// (a positive number), else 60. A malformed value is an Error naming the variable.
double collective_timeout_seconds();

}  // namespace moerun::comm
