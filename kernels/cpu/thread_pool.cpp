// The pool's dispatch: a generation counter that workers poll, then sleep on (see thread_pool.h).

#include "kernels/cpu/thread_pool.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <system_error>

#include "moerun/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace moerun::cpu {
namespace {

// About 50-100 us of polling (pause is tens of cycles): longer than the gap between the ops of one
// decode step, short enough that an idle session stops burning a core almost at once.
constexpr int kSpinPauses = 1 << 12;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // Workers start with every signal blocked (a thread inherits its creator's mask), so SIGINT and
  // SIGTERM reach the thread that waits on input or polls for them, and interrupt its reads.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  struct RestoreMask {
    sigset_t* mask;
    ~RestoreMask() { pthread_sigmask(SIG_SETMASK, mask, nullptr); }
  } restore{&old};
  for (int i = 1; i < threads; ++i) {
    try {
      workers_.emplace_back([this, i] { work(i); });
    } catch (const std::system_error& e) {  // out of memory for stacks, a process or thread limit
      stop_workers();  // the threads already started must be joined, or their destructors terminate
      throw Error("threads", detail::cat("cannot start thread ", i + 1, " of ", threads, ": ", e.what(), " (ask for fewer with -t)"));
    }
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::run_slice(int index) {
  for (;;) {
    const int64_t begin = cursor_.fetch_add(chunk_, std::memory_order_relaxed);
    if (begin >= n_) return;
    (*fn_)(begin, std::min(n_, begin + chunk_), index);
  }
}

void ThreadPool::work(int index) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g;
    int spins = 0;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinPauses) {
        cpu_relax();
        continue;
      }
      // Sleep. sleepers_ is raised before the value is re-checked inside wait(), and the caller bumps
      // the generation before reading sleepers_ (both seq_cst): either it sees a sleeper and
      // notifies, or wait() sees the new generation and returns at once.
      sleepers_.fetch_add(1);
      generation_.wait(seen);
      sleepers_.fetch_sub(1);
      spins = 0;
    }
    seen = g;
    if (stop_.load(std::memory_order_acquire)) return;
    run_slice(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int64_t n, FunctionRef fn, int64_t align) {
  align = std::max<int64_t>(align, 1);
  if (workers_.empty() || n <= align) {
    if (n > 0) fn(0, n, 0);
    return;
  }
  fn_ = &fn;
  n_ = n;
  align_ = align;
  // About eight chunks per thread: enough to even out cores that run at different speeds, few
  // enough that claiming them costs nothing next to the work.
  const int64_t per = (n + 8 * size() - 1) / (8 * size());
  chunk_ = std::max<int64_t>(align, (per + align - 1) / align * align);
  cursor_.store(0, std::memory_order_relaxed);
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1);  // seq_cst: publishes the call, ordered before the sleepers_ read
  if (sleepers_.load() > 0) generation_.notify_all();
  run_slice(0);
  // Workers normally finish within microseconds of us; on an oversubscribed machine one may have
  // been descheduled, so stop hogging the core after a while.
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < kSpinPauses) cpu_relax();
    else std::this_thread::yield();
  }
}

}  // namespace moerun::cpu
