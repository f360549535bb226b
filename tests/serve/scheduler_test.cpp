// The server's scheduler (continuous batching over slots): jobs run together give what generate()
// gives each alone, prompts prefilled in chunks beside decoding slots too; seeds reproduce; a
// queue past its bound refuses; cancellation (by handle or a dead client) frees the slot within a
// step; prefix reuse; refusals. The tiny golden llama model (vocabulary 512) with the default
// model's tokenizer, which has a token for every id below 512.

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/generate.h"
#include "serve/scheduler.h"
#include "serve/server.h"
#include "support/golden.h"

namespace moerun::serve {
namespace {

namespace fs = std::filesystem;
using moerun::testing::golden_dir;

const fs::path kTokenizerDir = fs::path(MOERUN_SOURCE_DIR) / "models" / "default";
#define REQUIRE_TOKENIZER() \
  if (!fs::exists(kTokenizerDir / "tokenizer.json")) GTEST_SKIP() << "models/default is not installed (run scripts/setup.sh)"

// A job's outcome, collected from its callbacks.
struct Outcome {
  std::mutex m;
  std::condition_variable cv;
  std::string text;
  bool done = false;
  JobResult result;
  int texts = 0;
  // A slow client: each piece of text takes 5 ms to take (callbacks run on the scheduler thread),
  // so a long job is still running when the test acts on it.
  bool slow = false;

  Job job(std::vector<int32_t> prompt, int64_t max_tokens, SamplerParams sampling = {.temperature = 0.0f}) {
    Job j;
    j.prompt = std::move(prompt);
    j.max_tokens = max_tokens;
    j.sampling = sampling;
    j.on_text = [this](std::string_view t) {
      if (slow) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      const std::lock_guard<std::mutex> lock(m);
      text += t;
      ++texts;
      cv.notify_all();
    };
    j.on_done = [this](const JobResult& r) {
      const std::lock_guard<std::mutex> lock(m);
      result = r;
      done = true;
      cv.notify_all();
    };
    return j;
  }
  bool wait(std::chrono::seconds limit = std::chrono::seconds(60)) {
    std::unique_lock<std::mutex> lock(m);
    return cv.wait_for(lock, limit, [this] { return done; });
  }
  bool wait_text(std::chrono::seconds limit = std::chrono::seconds(60)) {
    std::unique_lock<std::mutex> lock(m);
    return cv.wait_for(lock, limit, [this] { return texts > 0 || done; });
  }
};

std::vector<std::vector<int32_t>> prompts() {
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p;
    for (int t = 0; t < 5 + 7 * i; ++t) p.push_back((37 * t + 11 * i + 3) % 500 + 5);
    out.push_back(p);
  }
  return out;
}

// generate() alone, from an empty session.
GenerateResult alone(const Engine& engine, const Tokenizer& tok, const std::vector<int32_t>& prompt, int64_t max_tokens,
                     const SamplerParams& sp = {.temperature = 0.0f}) {
  Session s(engine);
  Sampler sampler(sp);
  GenerateOptions go;
  go.max_tokens = max_tokens;
  return generate(s, tok, sampler, prompt, go, [](std::string_view) { return true; });
}

TEST(Scheduler, ConcurrentJobsGiveWhatEachGivesAlone) {
  REQUIRE_TOKENIZER();
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"), {.kv_type = KvType::f32, .backend = BackendKind::cpu});
  const auto ps = prompts();
  constexpr int64_t kTokens = 12;
  std::vector<GenerateResult> want;
  for (const auto& p : ps) want.push_back(alone(engine, tok, p, kTokens));
  // Whole prompts in a step, and a budget of 8 tokens per step (prompts in chunks beside decodes).
  for (int64_t budget : {512, 8}) {
    Scheduler sched(engine, tok, {.parallel = 4, .context = 128, .step_tokens = budget, .max_queue = 16});
    std::vector<std::unique_ptr<Outcome>> outs;
    for (const auto& p : ps) {
      outs.push_back(std::make_unique<Outcome>());
      ASSERT_NE(sched.submit(outs.back()->job(p, kTokens)), nullptr);
    }
    for (size_t i = 0; i < ps.size(); ++i) {
      ASSERT_TRUE(outs[i]->wait()) << "job " << i << " did not finish";
      EXPECT_EQ(outs[i]->text, want[i].text) << "budget " << budget << ", job " << i;
      EXPECT_EQ(outs[i]->result.completion_tokens, want[i].generated_tokens) << "job " << i;
      EXPECT_EQ(outs[i]->result.finish_reason, want[i].finish_reason) << "job " << i;
      EXPECT_EQ(outs[i]->result.prompt_tokens, static_cast<int64_t>(ps[i].size()));
    }
    const SchedulerMetrics m = sched.metrics();
    EXPECT_EQ(m.finished, ps.size());
    EXPECT_EQ(m.active, 0);
    EXPECT_GT(m.steps, 0u);
  }
}

TEST(Scheduler, SeededJobsReproduceAndAPromptItsCacheHoldsIsReused) {
  REQUIRE_TOKENIZER();
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"), {.backend = BackendKind::cpu});
  Scheduler sched(engine, tok, {.parallel = 1, .context = 128, .step_tokens = 64, .max_queue = 4});
  const std::vector<int32_t> prompt = prompts()[3];
  const SamplerParams sampled{.temperature = 1.0f, .seed = 77};
  std::string first;
  for (int run = 0; run < 3; ++run) {  // cold, then with the whole prompt cached
    Outcome o;
    ASSERT_NE(sched.submit(o.job(prompt, 20, sampled)), nullptr);
    ASSERT_TRUE(o.wait());
    if (run == 0) {
      first = o.text;
      EXPECT_EQ(o.result.cached_tokens, 0);
    } else {
      EXPECT_EQ(o.text, first) << "run " << run;
      EXPECT_EQ(o.result.cached_tokens, static_cast<int64_t>(prompt.size()) - 1);  // all but the last token
    }
  }
  // A longer prompt that starts with the same tokens prefills only what is new.
  std::vector<int32_t> longer = prompt;
  longer.insert(longer.end(), {9, 8, 7, 6});
  Outcome o;
  ASSERT_NE(sched.submit(o.job(longer, 4)), nullptr);
  ASSERT_TRUE(o.wait());
  EXPECT_GE(o.result.cached_tokens, static_cast<int64_t>(prompt.size()));
  EXPECT_GE(sched.metrics().cached_tokens, 2 * (prompt.size() - 1) + prompt.size());
}

TEST(Scheduler, CancellationFreesTheSlotWithinAStep) {
  REQUIRE_TOKENIZER();
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"), {.backend = BackendKind::cpu});
  Scheduler sched(engine, tok, {.parallel = 1, .context = 512, .step_tokens = 64, .max_queue = 4});
  // By handle.
  Outcome a;
  a.slow = true;
  auto control = sched.submit(a.job(prompts()[0], 0));  // until the context is full: long
  ASSERT_NE(control, nullptr);
  ASSERT_TRUE(a.wait_text());
  control->cancel();
  ASSERT_TRUE(a.wait(std::chrono::seconds(10)));
  EXPECT_EQ(a.result.finish_reason, "cancelled");
  EXPECT_LT(a.result.completion_tokens, 400);
  // By a client that went away (its liveness check fails), while another job waits in the queue.
  Outcome b, c;
  b.slow = true;
  std::atomic<bool> alive{true};
  Job jb = b.job(prompts()[1], 0);
  jb.alive = [&] { return alive.load(); };
  ASSERT_NE(sched.submit(std::move(jb)), nullptr);
  ASSERT_NE(sched.submit(c.job(prompts()[2], 3)), nullptr);
  ASSERT_TRUE(b.wait_text());
  EXPECT_EQ(sched.metrics().queued, 1);
  alive = false;
  ASSERT_TRUE(b.wait(std::chrono::seconds(10)));
  EXPECT_EQ(b.result.finish_reason, "cancelled");
  ASSERT_TRUE(c.wait());  // the freed slot ran the queued job
  EXPECT_EQ(c.result.finish_reason, "length");
  EXPECT_EQ(c.result.completion_tokens, 3);
  EXPECT_EQ(sched.metrics().cancelled, 2u);
}

TEST(Scheduler, AFullQueueRefusesAndBadPromptsAreErrors) {
  REQUIRE_TOKENIZER();
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"), {.backend = BackendKind::cpu});
  Scheduler sched(engine, tok, {.parallel = 1, .context = 512, .step_tokens = 64, .max_queue = 1});
  Outcome a, b, c;
  a.slow = true;
  auto ca = sched.submit(a.job(prompts()[0], 0));
  ASSERT_NE(ca, nullptr);
  ASSERT_TRUE(a.wait_text());  // a holds the only slot
  auto cb = sched.submit(b.job(prompts()[1], 2));
  ASSERT_NE(cb, nullptr);  // b waits in the queue
  EXPECT_EQ(sched.submit(c.job(prompts()[2], 2)), nullptr);  // no room for c
  ca->cancel();
  ASSERT_TRUE(b.wait());
  EXPECT_EQ(b.result.finish_reason, "length");

  Scheduler small(engine, tok, {.parallel = 1, .context = 64, .step_tokens = 64, .max_queue = 1});
  Outcome d;
  EXPECT_THROW(small.submit(d.job({}, 2)), Error);
  EXPECT_THROW(small.submit(d.job(std::vector<int32_t>(65, 5), 2)), Error);  // past the 64-token context
  EXPECT_THROW(small.submit(d.job({1, 100000}, 2)), Error);
  // A prompt that fills the context exactly gets one token, then "context".
  Outcome e;
  ASSERT_NE(small.submit(e.job(std::vector<int32_t>(64, 5), 10)), nullptr);
  ASSERT_TRUE(e.wait());
  EXPECT_EQ(e.result.finish_reason, "context");
  EXPECT_EQ(e.result.completion_tokens, 1);
}

TEST(Scheduler, StoppingCancelsEverything) {
  REQUIRE_TOKENIZER();
  const Tokenizer tok = Tokenizer::load(kTokenizerDir);
  const Engine engine = Engine::load(golden_dir("llama"), {.backend = BackendKind::cpu});
  Outcome a, b;
  a.slow = true;
  {
    Scheduler sched(engine, tok, {.parallel = 1, .context = 512, .step_tokens = 64, .max_queue = 4});
    ASSERT_NE(sched.submit(a.job(prompts()[0], 0)), nullptr);
    ASSERT_NE(sched.submit(b.job(prompts()[1], 0)), nullptr);
    ASSERT_TRUE(a.wait_text());
  }
  EXPECT_TRUE(a.done);
  EXPECT_TRUE(b.done);
  EXPECT_EQ(a.result.finish_reason, "cancelled");
  EXPECT_EQ(b.result.finish_reason, "cancelled");
}

TEST(Server, ApiKeysCompareWholly) {
  EXPECT_TRUE(keys_equal("secret-key", "secret-key"));
  EXPECT_FALSE(keys_equal("secret-kez", "secret-key"));
  EXPECT_FALSE(keys_equal("secret", "secret-key"));
  EXPECT_FALSE(keys_equal("secret-key-and-more", "secret-key"));
  EXPECT_FALSE(keys_equal("", "secret-key"));
  EXPECT_TRUE(keys_equal("", ""));
}

}  // namespace
}  // namespace moerun::serve
