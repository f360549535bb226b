// Sampler::sample allocates nothing once its buffers are sized for the vocabulary: the decode loop
// calls it every token. Counted by replacing the global operator new of this test executable.

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <vector>

#include "moerun/sampler.h"

namespace {

std::atomic<long> g_allocations{0};

void* counted_alloc(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}

}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n); }
void* operator new[](std::size_t n) { return counted_alloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace moerun {
namespace {

// Allocations made by `f`.
template <class F>
long allocations_of(F&& f) {
  const long before = g_allocations.load();
  f();
  return g_allocations.load() - before;
}

TEST(SamplerAllocations, NoneOnceSized) {
  constexpr size_t kVocab = 4096;
  std::vector<float> logits(kVocab);
  for (size_t i = 0; i < kVocab; ++i) logits[i] = std::sin(static_cast<float>(i) * 0.37f) * 4.0f;
  std::vector<int32_t> history;
  history.reserve(256);
  for (int32_t i = 0; i < 100; ++i) history.push_back((i * 37) % static_cast<int32_t>(kVocab));
  const SamplerParams cases[] = {
      {.temperature = 0.0f},                                                          // greedy
      {.temperature = 0.0f, .repeat_penalty = 1.3f, .frequency_penalty = 0.2f},       // greedy with penalties
      {.temperature = 0.8f, .seed = 1},                                               // plain sampling
      {.temperature = 0.7f, .top_k = 40, .top_p = 0.9f, .min_p = 0.05f, .repeat_penalty = 1.1f, .seed = 2},
  };
  for (const SamplerParams& p : cases) {
    Sampler s(p);
    s.sample(logits, history);  // sizes the buffers
    const long n = allocations_of([&] {
      for (int step = 0; step < 50; ++step) {
        const int32_t id = s.sample(logits, history);
        history.push_back(id);  // within the reserved capacity
        history.erase(history.begin());
      }
    });
    EXPECT_EQ(n, 0) << "temperature " << p.temperature << ", repeat penalty " << p.repeat_penalty;
  }
}

TEST(SamplerAllocations, VerifyNoneOnceSized) {
  constexpr size_t kVocab = 4096;
  std::vector<float> logits(kVocab), q(kVocab, 1.0f / kVocab);
  for (size_t i = 0; i < kVocab; ++i) logits[i] = std::sin(static_cast<float>(i) * 0.37f) * 4.0f;
  std::vector<int32_t> history;
  for (int32_t i = 0; i < 100; ++i) history.push_back((i * 37) % static_cast<int32_t>(kVocab));
  for (const SamplerParams& p : {SamplerParams{.temperature = 0.8f, .seed = 1},
                                 SamplerParams{.temperature = 0.7f, .top_k = 40, .top_p = 0.9f, .repeat_penalty = 1.1f, .seed = 2},
                                 SamplerParams{.temperature = 0.0f, .repeat_penalty = 1.1f}}) {
    Sampler s(p);
    s.verify(logits, history, 5, q);  // sizes the buffers
    const long n = allocations_of([&] {
      for (int32_t step = 0; step < 50; ++step) {
        s.verify(logits, history, step, q);  // a draft from q
        s.verify(logits, history, step);     // a certain draft
      }
    });
    EXPECT_EQ(n, 0) << "temperature " << p.temperature;
  }
}

}  // namespace
}  // namespace moerun
