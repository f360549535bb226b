#include "serve/scheduler.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "moerun/error.h"
#include "runtime/stop_matcher.h"
#include "util/strings.h"

namespace moerun::serve {

using detail::cat;

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

}  // namespace

struct Scheduler::Slot {
  Slot(const Engine& engine, int64_t context) : session(engine, context, /*workspace=*/false) {}

  Session session;
  std::vector<int32_t> cached;  // the tokens the session holds, positions [0, session.position())
  uint64_t last_used = 0;       // admission clock when it last took a job

  // The job it runs (busy), and where it stands.
  bool busy = false;
  Job job;
  std::shared_ptr<JobControl> control;
  size_t fed = 0;                  // prompt tokens in the cache
  int32_t next = -1;               // the sampled token to feed in the next step; -1: none (prefilling)
  std::vector<int32_t> history;    // prompt and sampled tokens, for the penalties
  std::optional<Sampler> sampler;
  std::optional<StreamDecoder> decoder;
  runtime::StopMatcher stops;
  JobResult result;
  double admitted_at = 0, first_token_at = 0;

  bool prefilling() const { return busy && fed < job.prompt.size(); }
};

Scheduler::Scheduler(const Engine& engine, const Tokenizer& tokenizer, const SchedulerOptions& options)
    : engine_(engine), tokenizer_(tokenizer), options_(options) {
  if (options_.parallel < 1 || options_.parallel > 4096) throw Error("--parallel", cat("must be in [1, 4096], found ", options_.parallel));
  if (options_.step_tokens < options_.parallel)
    throw Error("step tokens", cat("must be at least the ", options_.parallel, " slots (one decode token each), found ", options_.step_tokens));
  context_ = options_.context > 0 ? options_.context : engine.default_context();
  batch_ = std::make_unique<Batch>(engine, BatchOptions{.max_tokens = options_.step_tokens, .max_sequences = options_.parallel,
                                                        .max_context = context_});
  for (int i = 0; i < options_.parallel; ++i) slots_.push_back(std::make_unique<Slot>(engine, context_));
  metrics_.slots = options_.parallel;
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<JobControl> Scheduler::submit(Job job) {
  const auto n = static_cast<int64_t>(job.prompt.size());
  if (n == 0) throw Error("prompt", "is empty");
  if (n > context_)
    throw Error("prompt", cat("is ", n, " tokens, more than the ", context_, "-token context of a slot (the server's -c)"));
  for (int32_t id : job.prompt)
    if (id < 0 || id >= engine_.config().vocab_size)
      throw Error("prompt", cat("token id ", id, " is outside the vocabulary [0, ", engine_.config().vocab_size, ")"));
  auto control = std::make_shared<JobControl>();
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (stop_ || queue_.size() >= options_.max_queue) return nullptr;
    queue_.push_back({std::move(job), control, now_seconds()});
    metrics_.queued = static_cast<int64_t>(queue_.size());
  }
  wake_.notify_all();
  return control;
}

void Scheduler::cancel_all() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    cancel_all_ = true;
    for (Pending& p : queue_) p.control->cancel();
  }
  wake_.notify_all();
}

SchedulerMetrics Scheduler::metrics() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  return metrics_;
}

int64_t Scheduler::busy_slots() const {
  return std::count_if(slots_.begin(), slots_.end(), [](const auto& s) { return s->busy; });
}

// A job that never got a slot ends "cancelled", having waited since it was queued.
void Scheduler::cancel_queued(Pending& p) {
  JobResult r;
  r.finish_reason = "cancelled";
  r.prompt_tokens = static_cast<int64_t>(p.job.prompt.size());
  r.queue_seconds = now_seconds() - p.queued_at;
  if (p.job.on_done) p.job.on_done(r);
}

// The job is over: the text held back is sent (unless it was cut at a stop string or cancelled),
// the callbacks told, the slot freed. Its cache keeps what it holds for the next job's prefix.
void Scheduler::retire(Slot& s, const std::string& reason, const std::string& error) {
  JobResult& r = s.result;
  r.finish_reason = reason;
  r.error = error;
  if (reason != "stop" && reason != "cancelled" && reason != "error" && s.decoder) {
    bool stopped = false;
    std::string tail = s.stops.push(s.decoder->flush(), stopped);
    if (stopped) r.finish_reason = "stop";
    else tail += s.stops.flush();
    if (!tail.empty() && s.job.on_text) s.job.on_text(tail);
  }
  const double now = now_seconds();
  if (s.first_token_at > 0) {
    r.prompt_seconds = s.first_token_at - s.admitted_at;
    r.decode_seconds = now - s.first_token_at;
  } else {
    r.prompt_seconds = now - s.admitted_at;
  }
  s.busy = false;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    ++(reason == "cancelled" ? metrics_.cancelled : reason == "error" ? metrics_.failed : metrics_.finished);
    metrics_.active = busy_slots();
  }
  if (s.job.on_done) s.job.on_done(r);
  s.job = Job{};
  s.control.reset();
  s.sampler.reset();
  s.decoder.reset();
  s.history.clear();
  s.next = -1;
}

// Queued jobs into free slots, oldest first, each into the free slot whose cache shares the
// longest prefix with its prompt (ties: the least recently used).
void Scheduler::admit() {
  for (;;) {
    Pending p;
    Slot* best = nullptr;
    size_t best_prefix = 0;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (queue_.empty()) return;
      for (auto& slot : slots_) {
        if (slot->busy) continue;
        const size_t prefix = common_prefix(slot->cached, queue_.front().job.prompt);
        if (!best || prefix > best_prefix || (prefix == best_prefix && slot->last_used < best->last_used)) {
          best = slot.get();
          best_prefix = prefix;
        }
      }
      if (!best) return;
      p = std::move(queue_.front());
      queue_.pop_front();
      metrics_.queued = static_cast<int64_t>(queue_.size());
    }
    Slot& s = *best;
    // The last prompt token must run to give the first logits, even when the cache holds it all.
    const size_t keep = std::min(best_prefix, p.job.prompt.size() - 1);
    s.session.truncate(static_cast<int64_t>(keep));
    s.cached.resize(keep);
    s.busy = true;
    s.last_used = ++clock_;
    s.job = std::move(p.job);
    s.control = std::move(p.control);
    s.fed = keep;
    s.next = -1;
    s.history = s.job.prompt;
    s.sampler.emplace(s.job.sampling);
    s.decoder.emplace(tokenizer_, s.job.skip_special_tokens);
    s.stops = runtime::StopMatcher(s.job.stop);
    s.result = JobResult{};
    s.result.prompt_tokens = static_cast<int64_t>(s.job.prompt.size());
    s.result.cached_tokens = static_cast<int64_t>(keep);
    s.admitted_at = now_seconds();
    s.result.queue_seconds = s.admitted_at - p.queued_at;
    s.first_token_at = 0;
  }
}

// A slot's next token from its logits, as generate() does it: sampled with the penalties over the
// prompt and the tokens so far; EOS ends the job unsent; the text goes through the stop strings.
void Scheduler::sample(Slot& s, std::span<const float> logits) {
  if (s.first_token_at == 0) s.first_token_at = now_seconds();
  const int32_t id = s.sampler->sample(logits, s.history);
  ++s.result.completion_tokens;
  s.history.push_back(id);
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    ++metrics_.generated_tokens;
  }
  if (std::find(s.job.eos_ids.begin(), s.job.eos_ids.end(), id) != s.job.eos_ids.end()) return retire(s, "eos");
  bool stopped = false;
  const std::string text = s.stops.push(s.decoder->push(id), stopped);
  if (!text.empty() && s.job.on_text) s.job.on_text(text);
  if (stopped) return retire(s, "stop");
  if (s.job.max_tokens > 0 && s.result.completion_tokens >= s.job.max_tokens) return retire(s, "length");
  if (s.session.position() >= s.session.context()) return retire(s, "context");
  s.next = id;
}

// One step: returns false when there was nothing to run.
bool Scheduler::step() {
  // Cancelled or abandoned jobs, running or queued, go first: their slots are free for this step.
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (cancel_all_)
      for (auto& slot : slots_)
        if (slot->busy) slot->control->cancel();
    cancel_all_ = false;
  }
  for (auto& slot : slots_)
    if (slot->busy && (slot->control->cancelled() || (slot->job.alive && !slot->job.alive()))) retire(*slot, "cancelled");
  std::vector<Pending> dropped;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->control->cancelled() || (it->job.alive && !it->job.alive())) {
        dropped.push_back(std::move(*it));
        it = queue_.erase(it);
        ++metrics_.cancelled;
      } else {
        ++it;
      }
    }
    metrics_.queued = static_cast<int64_t>(queue_.size());
  }
  for (Pending& p : dropped) cancel_queued(p);
  admit();

  // Decoding slots first (one token each), then prompt chunks, oldest admission first, within the
  // step's token budget.
  std::vector<BatchEntry> entries;
  std::vector<Slot*> owners;
  std::vector<size_t> chunk;
  int64_t budget = options_.step_tokens;
  for (auto& slot : slots_)
    if (slot->busy && !slot->prefilling() && slot->next >= 0) {
      entries.push_back({&slot->session, std::span<const int32_t>(&slot->next, 1)});
      owners.push_back(slot.get());
      chunk.push_back(0);
      --budget;
    }
  std::vector<Slot*> filling;
  for (auto& slot : slots_)
    if (slot->prefilling()) filling.push_back(slot.get());
  std::sort(filling.begin(), filling.end(), [](const Slot* a, const Slot* b) { return a->last_used < b->last_used; });
  for (Slot* s : filling) {
    if (budget <= 0) break;
    // The last prompt token runs on its own, in a later step than the rest: a prompt's first
    // logits then come from the same single-token computation whether the slot's cache was cold or
    // already held the prompt (a repeated request), so a seeded request samples the same text
    // again (the chunked and single-token paths round differently).
    const size_t last = s->job.prompt.size() - 1;
    const size_t n = s->fed < last ? std::min(static_cast<size_t>(budget), last - s->fed) : 1;
    entries.push_back({&s->session, std::span<const int32_t>(s->job.prompt).subspan(s->fed, n)});
    owners.push_back(s);
    chunk.push_back(n);
    budget -= static_cast<int64_t>(n);
  }
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    metrics_.active = busy_slots();
  }
  if (entries.empty()) return false;

  const double t0 = now_seconds();
  std::span<const float> logits;
  try {
    logits = batch_->forward(entries);
  } catch (const std::exception& e) {
    // The step changed no session; its jobs fail (the others keep running), their caches are dropped.
    for (Slot* s : owners) {
      s->session.reset();
      s->cached.clear();
      retire(*s, "error", e.what());
    }
    return true;
  }
  const double secs = now_seconds() - t0;
  const auto V = static_cast<size_t>(engine_.config().vocab_size);
  uint64_t prefilled = 0, reused = 0;
  for (size_t i = 0; i < owners.size(); ++i) {
    Slot& s = *owners[i];
    const std::span<const float> row = logits.subspan(i * V, V);
    if (chunk[i] > 0) {  // a prompt chunk
      if (static_cast<int64_t>(s.fed) == s.result.cached_tokens) reused += static_cast<uint64_t>(s.result.cached_tokens);
      s.cached.insert(s.cached.end(), s.job.prompt.begin() + static_cast<int64_t>(s.fed),
                      s.job.prompt.begin() + static_cast<int64_t>(s.fed + chunk[i]));
      s.fed += chunk[i];
      prefilled += chunk[i];
      if (s.fed == s.job.prompt.size()) sample(s, row);
    } else {
      s.cached.push_back(s.next);
      sample(s, row);
    }
  }
  const std::lock_guard<std::mutex> lock(mutex_);
  ++metrics_.steps;
  metrics_.step_seconds += secs;
  for (size_t b = 0; b < std::size(SchedulerMetrics::kStepBuckets); ++b)
    if (secs <= SchedulerMetrics::kStepBuckets[b]) ++metrics_.step_buckets[b];
  metrics_.prompt_tokens += prefilled;
  metrics_.cached_tokens += reused;
  metrics_.active = busy_slots();
  return true;
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (stop_) break;
    }
    bool ran = false;
    try {
      ran = step();
    } catch (const std::exception& e) {
      // A callback threw (they should not): fail what runs rather than lose the thread.
      for (auto& slot : slots_)
        if (slot->busy) retire(*slot, "error", e.what());
      ran = true;
    }
    if (ran) continue;
    std::unique_lock<std::mutex> lock(mutex_);
    // Idle: sleep until a job arrives (with a timeout, so queued jobs' liveness is still polled).
    wake_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stop_ || !queue_.empty(); });
  }
  // Stopping: everything still running or queued ends "cancelled".
  for (auto& slot : slots_)
    if (slot->busy) retire(*slot, "cancelled");
  std::deque<Pending> rest;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    rest.swap(queue_);
  }
  for (Pending& p : rest) cancel_queued(p);
}

}  // namespace moerun::serve
