#pragma once
// cpu::Context: what the CPU ops run with besides their params, as cuda::Context is for the CUDA ops.
// It holds the thread pool the ops split their work across (nullable: everything runs on the calling
// thread) and all the scratch memory they need: one set per worker of the pool, indexed by the worker
// index the pool passes to each chunk (worker 0 is the calling thread), and one set the calling
// thread fills before it dispatches (prepared activations every worker reads, routing and MoE
// buffers). No kernel keeps thread_local state or allocates elsewhere: every buffer grows on the
// first use of a shape and keeps its capacity. Attention's score rows are grown for every worker
// before the dispatch, so a decode step after the first allocates nothing; the matmul row kernels'
// panels and head_matmul's per-head activations grow in each worker on its first chunk of a shape,
// as thread_local buffers did. One caller at a time, like the pool it holds.

#include <array>
#include <cstdint>
#include <vector>

#include "kernels/cpu/thread_pool.h"
#include "kernels/moe_plan.h"
#include "kernels/ops.h"

namespace moerun::cpu {

// At least n elements of v, growing it (never shrinking) when it is smaller.
template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// A matmul's activations as matmul.cpp prepares them once per call (padded and reordered floats, or
// int8 blocks with their scales and sums; see detail::MatmulCall), read by every worker.
struct MatmulActs {
  std::vector<float> xp, xd, xdp;
  std::vector<int8_t> xq, xq4;
  std::vector<int32_t> xsum, xcorr;
};

// One worker's scratch. On its own cache lines: workers grow theirs concurrently.
struct alignas(64) WorkerScratch {
  std::vector<float> rows;        // matmul row kernels: weight rows widened to fp32
  std::vector<float> f8x;         // FP8 matmul, few tokens: x times one row block's scales
  std::vector<float> panel;       // AVX-512 matmul, many tokens: a packed panel of weight rows
  std::vector<uint8_t> qpanel;    // AVX-512 quantized matmul, many tokens: a repacked panel
  std::vector<float> qscales;     // ... and its scales
  std::vector<float> scores;      // attention: the score rows of the worker's queries
  std::vector<float> kv_rows;     // attention, f16/bf16/q8_0 caches: a few cache rows widened to fp32
  std::vector<float> head_row;    // head_matmul (transposed, f16 weights): one widened weight row
  MatmulActs acts;                // a matmul this worker runs alone (head_matmul's per-head products)
};

// Scratch of the calling thread, filled before a dispatch or used by single-threaded ops.
struct CallScratch {
  std::array<MatmulActs, kMatmulGroupMax> matmul;  // entry i of a matmul_group (a matmul is entry 0)
  std::vector<float> route;                        // route: scores, biased scores, group scores
  std::vector<int32_t> route_groups;               // route: the kept groups
  MoePlan moe_plan;                                // moe: token->expert pairs sorted by expert
  std::vector<float> moe_x, moe_gate, moe_up, moe_down;  // moe: an expert's rows through its FFN
  // A matmul (group) with folded steps: the normed x (MatmulParams::norm_weight), and the products
  // before they are added into out (accumulate).
  std::vector<float> fused_x, fused_out;
};

class Context {
 public:
  // pool: the threads to split work across (kept by the caller, which outlives this); nullptr: the
  // calling thread alone.
  explicit Context(ThreadPool* pool = nullptr) : pool_(pool), workers_(static_cast<size_t>(pool ? pool->size() : 1)) {}
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  ThreadPool* pool() const noexcept { return pool_; }
  int threads() const noexcept { return static_cast<int>(workers_.size()); }
  WorkerScratch& worker(int index) noexcept { return workers_[static_cast<size_t>(index)]; }
  CallScratch& call() noexcept { return call_; }

  // Grows one buffer of every worker to n elements before a dispatch: the pool hands chunks to
  // whichever thread is free, so this way no worker allocates inside the dispatch, and a shape run
  // once never allocates again whichever threads take its chunks later.
  template <class T>
  void reserve_each(std::vector<T> WorkerScratch::*buffer, int64_t n) {
    for (WorkerScratch& w : workers_) grow(w.*buffer, n);
  }

  // fn(begin, end, worker) over chunks of [0, n) on the pool (see ThreadPool::parallel_for), or
  // fn(0, n, 0) on the calling thread without one.
  void parallel_for(int64_t n, FunctionRef fn, int64_t align = 1) {
    if (pool_) pool_->parallel_for(n, fn, align);
    else if (n > 0) fn(0, n, 0);
  }

 private:
  ThreadPool* pool_;
  std::vector<WorkerScratch> workers_;
  CallScratch call_;
};

}  // namespace moerun::cpu
