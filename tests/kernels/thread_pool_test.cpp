// The CPU thread pool and the threaded matmul: every row computed exactly once, results identical to
// the single-threaded op (each output row is one thread's fixed-order dot product).

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <functional>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "kernels/cpu/context.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/error.h"

namespace moerun {
namespace {

// Under an address-space limit thread stacks cannot be mapped: the pool must throw an Error that
// says so and join the threads it did start (before: std::terminate, "terminate called without an
// active exception", from the joinable std::threads it left behind).
TEST(ThreadPool, ThreadCreationFailureIsAnError) {
#ifdef MOERUN_SANITIZED
  GTEST_SKIP() << "ASan's shadow memory does not live under an address-space limit";
#endif
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    rlimit limit{};
    getrlimit(RLIMIT_AS, &limit);
    // What the process maps now plus room for a few 8 MiB stacks, not for 256 of them.
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (!f || std::fscanf(f, "%lu", &pages) != 1) _exit(3);
    std::fclose(f);
    limit.rlim_cur = pages * static_cast<unsigned long>(sysconf(_SC_PAGE_SIZE)) + (64ul << 20);
    if (setrlimit(RLIMIT_AS, &limit) != 0) _exit(4);
    try {
      cpu::ThreadPool pool(256);
      _exit(5);  // every thread started: the limit did not bite
    } catch (const Error& e) {
      _exit(std::string(e.what()).find("cannot start thread") != std::string::npos ? 0 : 6);
    } catch (...) {
      _exit(7);
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child died by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(ThreadPool, CoversEveryIndexOnceWithAlignedSlices) {
  for (int threads : {1, 2, 3, 7}) {
    cpu::ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 5, 16, 17, 100, 1001}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.parallel_for(
          n,
          [&](int64_t b, int64_t e) {
            EXPECT_EQ(b % 16, 0) << "slices start on the alignment";
            for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
          },
          16);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "threads " << threads << " n " << n;
    }
  }
}

TEST(ThreadPool, RunsManyCallsInARow) {
  cpu::ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  for (int call = 0; call < 2000; ++call)
    pool.parallel_for(10, [&](int64_t b, int64_t e) { total += e - b; });
  EXPECT_EQ(total.load(), 20000);
}

TEST(ThreadPool, WakesWorkersThatWentToSleep) {
  // Gaps longer than the workers' spin: every call after the first finds them asleep on the futex.
  cpu::ThreadPool pool(3);
  for (int call = 0; call < 5; ++call) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::atomic<int64_t> total{0};
    pool.parallel_for(300, [&](int64_t b, int64_t e) { total += e - b; }, 16);
    ASSERT_EQ(total.load(), 300) << "call " << call;
  }
}

TEST(ThreadPool, ChunksAreSmallEnoughToShareWork) {
  // Threads claim chunks from a shared cursor (about eight per thread), so a slower core does less
  // instead of holding the call up: a call over many rows comes in several aligned chunks.
  cpu::ThreadPool pool(2);
  std::mutex m;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  pool.parallel_for(4096, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lock(m);
    chunks.emplace_back(b, e);
  }, 16);
  EXPECT_GE(chunks.size(), 8u);
  int64_t total = 0;
  for (const auto& [b, e] : chunks) {
    EXPECT_EQ(b % 16, 0);
    EXPECT_LE(e - b, 4096 / 8);
    total += e - b;
  }
  EXPECT_EQ(total, 4096);
}

TEST(ThreadPool, TakesAnyCallableByReference) {
  cpu::ThreadPool pool(2);
  std::atomic<int64_t> covered{0};
  const std::function<void(int64_t, int64_t)> fn = [&](int64_t b, int64_t e) { covered += e - b; };
  pool.parallel_for(100, fn, 1);  // a std::function still works (passed by reference, not copied)
  EXPECT_EQ(covered.load(), 100);
  struct Functor {
    std::atomic<int64_t>* covered;
    void operator()(int64_t b, int64_t e) const { *covered += e - b; }
  };
  std::atomic<int64_t> covered2{0};
  pool.parallel_for(100, Functor{&covered2}, 1);
  EXPECT_EQ(covered2.load(), 100);
  pool.parallel_for(0, Functor{&covered2}, 1);  // nothing to do: fn is not called
  EXPECT_EQ(covered2.load(), 100);
}

TEST(ThreadPool, PassesEachChunkItsWorkerIndex) {
  // Kernels index their per-thread scratch by it (kernels/cpu/context.h): every index is in
  // [0, size()), and no two chunks run on one index at the same time.
  for (int threads : {1, 2, 3}) {
    cpu::ThreadPool pool(threads);
    std::vector<std::atomic<int>> busy(static_cast<size_t>(threads));
    std::atomic<int64_t> covered{0};
    std::atomic<bool> bad_index{false}, shared{false};
    for (int call = 0; call < 50; ++call)
      pool.parallel_for(1000, [&](int64_t b, int64_t e, int worker) {
        if (worker < 0 || worker >= threads) {
          bad_index = true;
          return;
        }
        if (busy[static_cast<size_t>(worker)].fetch_add(1) != 0) shared = true;
        covered += e - b;
        std::this_thread::yield();
        busy[static_cast<size_t>(worker)].fetch_sub(1);
      });
    EXPECT_FALSE(bad_index) << "threads " << threads;
    EXPECT_FALSE(shared) << "threads " << threads;
    EXPECT_EQ(covered.load(), 50 * 1000) << "threads " << threads;
  }
}

TEST(CpuContext, HasScratchPerThreadAndKeepsItsCapacity) {
  cpu::ThreadPool pool(3);
  cpu::Context alone, threaded(&pool);
  EXPECT_EQ(alone.pool(), nullptr);
  EXPECT_EQ(alone.threads(), 1);
  EXPECT_EQ(threaded.pool(), &pool);
  EXPECT_EQ(threaded.threads(), 3);
  // A decode-like step (bf16 GEMV and GQA attention over a long cache) run twice: the second run
  // finds every buffer large enough, so no scratch moves (nothing is allocated in steady state).
  const int64_t in = 67, out = 131, ctx_len = 300;
  std::vector<float> x(static_cast<size_t>(in), 0.5f), y(static_cast<size_t>(out));
  std::vector<uint16_t> w(static_cast<size_t>(in * out), cpu::f32_to_bf16(0.25f));
  std::vector<float> q(4 * 16, 0.1f), kv(static_cast<size_t>(ctx_len * 2 * 16), 0.2f), att(4 * 16);
  const int64_t pos = ctx_len - 1;
  auto step = [&] {
    cpu::matmul({.out = y.data(), .x = x.data(), .weight = w.data(), .weight_dtype = DType::bf16, .n = 1,
                 .in_features = in, .out_features = out},
                threaded);
    cpu::attention({.out = att.data(), .q = q.data(), .k = kv.data(), .v = kv.data() + 16, .positions = &pos,
                    .n_tokens = 1, .n_heads = 4, .n_kv_heads = 1, .qk_dim = 16, .v_dim = 16, .q_token_stride = 64,
                    .q_head_stride = 16, .k_pos_stride = 32, .k_head_stride = 0, .v_pos_stride = 32,
                    .v_head_stride = 0, .scale = 0.25f},
                   threaded);
  };
  auto buffers = [&] {
    std::vector<const void*> v = {threaded.call().matmul[0].xp.data()};
    for (int i = 0; i < threaded.threads(); ++i) v.push_back(threaded.worker(i).scores.data());
    return v;
  };
  step();
  const std::vector<const void*> first = buffers();
  step();
  EXPECT_EQ(buffers(), first);
  EXPECT_EQ(y[0], y[out - 1]);
}

TEST(MatmulThreaded, EqualsSingleThreadedBitForBit) {
  // Random (never zero) bf16 and f32 weights, sizes that are not multiples of 16.
  uint64_t state = 12345;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>((state >> 40) & 0xffff) / 65536.0f - 0.49f;
  };
  for (DType dt : {DType::f32, DType::bf16}) {
    for (int64_t n : {1, 3, 9}) {
      const int64_t in = 67, out = 131;
      std::vector<float> x(static_cast<size_t>(n * in)), bias(static_cast<size_t>(out));
      for (float& v : x) v = next();
      for (float& v : bias) v = next();
      std::vector<float> wf(static_cast<size_t>(out * in));
      std::vector<uint16_t> wb(wf.size());
      for (size_t i = 0; i < wf.size(); ++i) {
        wb[i] = cpu::f32_to_bf16(next());
        wf[i] = cpu::bf16_to_f32(wb[i]);
      }
      const void* w = dt == DType::f32 ? static_cast<const void*>(wf.data()) : static_cast<const void*>(wb.data());
      std::vector<float> one(static_cast<size_t>(n * out)), many(one.size());
      cpu::Context alone;
      cpu::matmul({.out = one.data(), .x = x.data(), .weight = w, .weight_dtype = dt, .bias = bias.data(), .n = n,
                   .in_features = in, .out_features = out},
                  alone);
      cpu::ThreadPool pool(3);
      cpu::Context threaded(&pool);
      cpu::matmul({.out = many.data(), .x = x.data(), .weight = w, .weight_dtype = dt, .bias = bias.data(), .n = n,
                   .in_features = in, .out_features = out},
                  threaded);
      EXPECT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0) << dtype_name(dt) << " n=" << n;
    }
  }
}

}  // namespace
}  // namespace moerun
