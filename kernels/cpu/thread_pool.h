#pragma once
// ThreadPool: the CPU backend's workers (docs/DESIGN.md: one pool sized by -t; ops split rows across
// it). The calling thread takes part, so a pool of 1 runs everything inline.
//
// Decode issues a few hundred parallel_for calls per token, each only tens of microseconds long, so
// dispatch latency matters more than anything else here: a call publishes (fn, n, align) and bumps a
// generation counter; workers spin on that counter (with pause) for a while before sleeping on it
// (futex via std::atomic::wait), and the caller spins on a pending count. No lock, no allocation:
// the callable is passed by reference (FunctionRef), never copied into a std::function.

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

namespace moerun::cpu {

// A non-owning reference to a callable taking (begin, end) or (begin, end, worker): two pointers, no
// allocation. The callable must outlive the call (a lambda argument lives until the end of the full
// expression). `worker` is the index of the thread running the chunk, in [0, ThreadPool::size()):
// 0 is the calling thread; a kernel indexes its per-thread scratch with it (kernels/cpu/context.h).
class FunctionRef {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> &&
             (std::is_invocable_v<F&, int64_t, int64_t> || std::is_invocable_v<F&, int64_t, int64_t, int>))
  FunctionRef(F&& f) noexcept  // NOLINT(google-explicit-constructor): converts like std::function
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, int64_t b, int64_t e, int worker) {
          auto& fn = *static_cast<std::remove_reference_t<F>*>(o);
          if constexpr (std::is_invocable_v<F&, int64_t, int64_t, int>) fn(b, e, worker);
          else fn(b, e);
        }) {}
  void operator()(int64_t begin, int64_t end, int worker = 0) const { call_(obj_, begin, end, worker); }

 private:
  void* obj_;
  void (*call_)(void*, int64_t, int64_t, int);
};

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // threads <= 0: one per hardware thread
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const noexcept { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end[, worker]) on contiguous chunks covering [0, n) exactly once (chunk starts
  // are multiples of `align`) and returns when all are done; no two chunks run on one worker index at
  // the same time. Threads claim chunks from a shared cursor, about eight per thread, so a core
  // slowed by the other's traffic or by a neighbour on the host does less instead of holding
  // everyone up. n <= align runs inline (worker 0). Not reentrant.
  void parallel_for(int64_t n, FunctionRef fn, int64_t align = 1);

 private:
  void work(int index);
  void stop_workers();  // wakes every worker to leave, joins them
  void run_slice(int index);

  std::vector<std::thread> workers_;
  // The published call; written before generation_ is bumped (release), read after it is seen.
  const FunctionRef* fn_ = nullptr;
  int64_t n_ = 0, align_ = 1, chunk_ = 1;
  // Each on its own cache line: workers poll generation_ while the caller counts pending_ down.
  alignas(64) std::atomic<uint64_t> generation_{0};
  alignas(64) std::atomic<int> pending_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  alignas(64) std::atomic<int64_t> cursor_{0};  // next unclaimed index of the call
  std::atomic<bool> stop_{false};
};

}  // namespace moerun::cpu
