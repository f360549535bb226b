#pragma once
// The server's scheduler: continuous batching over a fixed pool of slots, each a Session. One
// thread runs the model. Every step it (1) retires cancelled jobs, (2) moves queued jobs into free
// slots -- the slot whose cache shares the longest prefix with the job's prompt, so a chat's next
// turn prefills only what is new -- and (3) runs one Batch step: one token for every decoding slot
// and, within a token budget (SchedulerOptions::step_tokens), the next chunk of each prefilling
// slot's prompt, so long prompts never stall the slots that stream (a prompt's last token runs in
// a step of its own, so its first logits do not depend on what the cache held). Each slot samples from its own
// Sampler (seeded per job) exactly as generate() does, so a greedy job gives the tokens `moerun run`
// gives, whoever shares its steps.
//
// Jobs are handed over with their callbacks, which run on the scheduler thread and must be quick
// (the server queues the text for the HTTP thread that streams it). A job that is cancelled
// (JobControl::cancel, or its `alive` check failing: the client went away) is retired before the
// next step and frees its slot.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "moerun/engine.h"
#include "moerun/sampler.h"
#include "moerun/tokenizer.h"

namespace moerun::serve {

struct SchedulerOptions {
  int parallel = 4;            // slots: sequences decoded together
  int64_t context = 0;         // KV positions per slot; 0: the engine's default context
  int64_t step_tokens = 512;   // tokens of one step, decodes and prefill chunks together (>= parallel)
  size_t max_queue = 64;       // jobs waiting for a slot; past it submit() refuses (the server's 503)
};

struct JobResult {
  // generate()'s reasons: "eos", "stop", "length", "context", "cancelled"; "error" with `error` set.
  std::string finish_reason;
  std::string error;
  int64_t prompt_tokens = 0;      // the whole prompt
  int64_t cached_tokens = 0;      // of which the slot already held (not prefilled again)
  int64_t completion_tokens = 0;  // sampled tokens, EOS included
  double queue_seconds = 0, prompt_seconds = 0, decode_seconds = 0;
};

struct Job {
  std::vector<int32_t> prompt;   // 1..context tokens
  SamplerParams sampling;
  int64_t max_tokens = 0;        // <= 0: until the context is full
  std::vector<std::string> stop;
  std::vector<int32_t> eos_ids;
  bool skip_special_tokens = true;
  // On the scheduler thread: text as it becomes final (stop strings held back and never sent);
  // the first call comes after the first sampled token.
  std::function<void(std::string_view text)> on_text;
  std::function<void(const JobResult&)> on_done;  // exactly once, last
  // Polled once per step while the job runs or waits; false cancels it (a disconnected client).
  std::function<bool()> alive;
};

// A submitted job's handle: cancel it from any thread.
class JobControl {
 public:
  void cancel() noexcept { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

// What /metrics shows (a consistent copy).
struct SchedulerMetrics {
  int64_t active = 0, queued = 0, slots = 0;
  uint64_t prompt_tokens = 0;     // prefilled (cached ones not counted)
  uint64_t cached_tokens = 0;     // prompt tokens a slot already held
  uint64_t generated_tokens = 0;
  uint64_t steps = 0;
  double step_seconds = 0;        // summed over steps
  // Step durations as a Prometheus histogram: counts of steps at most kStepBuckets[i] seconds.
  static constexpr double kStepBuckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  std::vector<uint64_t> step_buckets = std::vector<uint64_t>(std::size(kStepBuckets), 0);
  uint64_t finished = 0, cancelled = 0, failed = 0;
};

class Scheduler {
 public:
  // Makes the slots (KV caches only: the Batch holds the one workspace) and starts the thread.
  Scheduler(const Engine& engine, const Tokenizer& tokenizer, const SchedulerOptions& options);
  ~Scheduler();  // stops: running and queued jobs finish "cancelled"
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues `job`. Returns nullptr, leaving the job untouched, when the queue is full. Throws Error
  // for a job that cannot run (empty prompt, longer than a slot's context) before queueing it.
  std::shared_ptr<JobControl> submit(Job job);

  // Cancels every running and queued job (they end "cancelled" within a step); new ones still queue.
  void cancel_all();

  int64_t context() const noexcept { return context_; }
  const SchedulerOptions& options() const noexcept { return options_; }
  SchedulerMetrics metrics() const;

 private:
  struct Slot;
  struct Pending {
    Job job;
    std::shared_ptr<JobControl> control;
    double queued_at = 0;
  };

  void loop();
  void admit();
  void retire(Slot& slot, const std::string& reason, const std::string& error = "");
  bool step();
  void sample(Slot& slot, std::span<const float> logits);
  void cancel_queued(Pending& p);
  int64_t busy_slots() const;  // (scheduler thread)

  const Engine& engine_;
  const Tokenizer& tokenizer_;
  SchedulerOptions options_;
  int64_t context_ = 0;
  std::unique_ptr<Batch> batch_;
  std::vector<std::unique_ptr<Slot>> slots_;
  uint64_t clock_ = 0;  // admission counter: least recently used slots are reused first

  mutable std::mutex mutex_;  // guards queue_, stop_ and metrics_
  std::condition_variable wake_;
  std::deque<Pending> queue_;
  bool stop_ = false;
  bool cancel_all_ = false;
  SchedulerMetrics metrics_;
  std::thread thread_;
};

}  // namespace moerun::serve
