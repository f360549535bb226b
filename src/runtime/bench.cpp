#include "moerun/bench.h"

#if MOERUN_HAVE_CUDA
#include "kernels/cuda/ceilings.h"
#include "kernels/cuda/context.h"
#endif

#include <algorithm>
#include <atomic>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>

#include "moerun/error.h"
#include "moerun/generate.h"
#include "moerun/sampler.h"
#include "moerun/tokenizer.h"
#include "runtime/counting_backend.h"

namespace moerun {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void finish(BenchResult& r) {
  double sum = 0;
  for (double t : r.tps) sum += t;
  r.mean = sum / static_cast<double>(r.tps.size());
  double var = 0;
  for (double t : r.tps) var += (t - r.mean) * (t - r.mean);
  r.sd = r.tps.size() > 1 ? std::sqrt(var / static_cast<double>(r.tps.size() - 1)) : 0.0;
}

std::vector<int32_t> random_ids(const Engine& engine, int n, uint64_t seed) {
  Rng rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.next() % static_cast<uint64_t>(engine.config().vocab_size));
  return ids;
}

// Sums n floats (n a multiple of 64 not required) with the widest loads the CPU has: four
// independent vector adders, so neither load width nor add latency limits the read rate.
#if defined(__x86_64__)
__attribute__((target("avx512f"))) double read_sum_avx512(const float* p, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  double s = 0;
  for (float l : lanes) s += l;
  for (; i < n; ++i) s += p[i];
  return s;
}
__attribute__((target("avx2"))) double read_sum_avx2(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  double s = 0;
  for (float l : lanes) s += l;
  for (; i < n; ++i) s += p[i];
  return s;
}
#endif

double read_sum(const float* p, size_t n) {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return read_sum_avx512(p, n);
  if (__builtin_cpu_supports("avx2")) return read_sum_avx2(p, n);
#endif
  float acc[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t j = 0; j < 8; ++j) acc[j] += p[i + j];
  double s = 0;
  for (float a : acc) s += a;
  for (; i < n; ++i) s += p[i];
  return s;
}


}  // namespace

BandwidthCeiling measure_read_bandwidth(int threads, uint64_t size) {
  threads = std::max(threads, 1);
  const size_t n = static_cast<size_t>(size / sizeof(float));
  std::unique_ptr<float[]> buf(new float[n]);
  for (size_t i = 0; i < n; ++i) buf[i] = static_cast<float>(i & 1023) * 1e-3f;  // touch every page before timing
  BandwidthCeiling best{0, threads, size};
  // Threads start first and wait at a barrier, so thread creation is not timed; each then reads its
  // own slice with 64-byte loads into four independent adders (read_sum), so memory is the limit.
  std::atomic<int> ready{0}, done{0}, go{-1};
  std::vector<double> sums(static_cast<size_t>(threads));
  std::vector<double> seconds(5);
  auto read_slice = [&](int t) {
    const size_t lo = n * static_cast<size_t>(t) / static_cast<size_t>(threads);
    const size_t hi = n * static_cast<size_t>(t + 1) / static_cast<size_t>(threads);
    sums[static_cast<size_t>(t)] += read_sum(buf.get() + lo, hi - lo);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int pass = 0; pass < 5; ++pass) {
        ready.fetch_add(1);
        while (go.load() < pass) std::this_thread::yield();
        read_slice(t);
        done.fetch_add(1);
      }
    });
  // The calling thread is reader 0 and the clock: it starts the pass once every reader waits at the
  // barrier and stops it when the last one is done.
  for (int pass = 0; pass < 5; ++pass) {
    while (ready.load() < (pass + 1) * (threads - 1)) std::this_thread::yield();
    const auto t0 = Clock::now();
    go.store(pass);
    read_slice(0);
    while (done.load() < (pass + 1) * (threads - 1)) std::this_thread::yield();
    seconds[static_cast<size_t>(pass)] = seconds_since(t0);
  }
  for (std::thread& th : pool) th.join();
  volatile double sink = 0;
  for (double s : sums) sink = sink + s;  // keep the reads
  for (double secs : seconds) best.gbps = std::max(best.gbps, static_cast<double>(n * sizeof(float)) / secs / 1e9);
  return best;
}

BandwidthCeiling measure_device_bandwidth() {
#if MOERUN_HAVE_CUDA
  cuda::Context ctx;
  return BandwidthCeiling{cuda::measure_copy_bandwidth_gbs(ctx), 1, 0};
#else
  throw Error("bench", "this build has no CUDA support, so there is no device bandwidth to measure");
#endif
}

double measure_device_gemm_tflops() {
#if MOERUN_HAVE_CUDA
  cuda::Context ctx;
  return cuda::measure_gemm_tflops(ctx);
#else
  throw Error("bench", "this build has no CUDA support, so there is no device GEMM rate to measure");
#endif
}

double prefill_flops_per_token(const Engine& engine) {
  const ModelConfig& c = engine.config();
  const bool tied = c.tie_word_embeddings;  // active_params counts a tied head once, as the embedding
  const double multiplied = static_cast<double>(engine.model().active_params()) -
                            (tied ? 0.0 : static_cast<double>(c.vocab_size) * static_cast<double>(c.hidden_size));
  return 2.0 * multiplied;
}

double decode_bytes_per_step(const Engine& engine, double contexts, int sequences, double experts_per_layer) {
  const ModelConfig& c = engine.config();
  // Every prepared weight once per step, except: one row of the embedding per sequence, and of each
  // MoE layer's routed experts only the distinct ones the step runs (experts of a layer have equal
  // sizes). A tied LM head is read whole as the head.
  double total = 0.0, routed = 0.0;
  for_each_tensor(engine.weights(), [&](const WeightSite& site, LinearPart, const Tensor& t) {
    if (site.mtp) return;  // the multi-token-prediction layer drafts; a decode step does not read it
    const auto b = static_cast<double>(t.nbytes());
    if (site.kind == WeightKind::table) total += b / static_cast<double>(c.vocab_size) * sequences;
    else if (site.routed()) routed += b;
    else total += b;
  });
  if (c.is_moe()) total += routed / static_cast<double>(c.router.n_routed_experts) * experts_per_layer;
  // KV rows read by attention, in the cache's type: GQA K and V per KV head; MLA one latent row.
  const auto row = static_cast<double>(kv_bytes(engine.kv_type(), c.kv_floats_per_position()));
  total += row * contexts * static_cast<double>(c.num_hidden_layers);
  return total;
}

double decode_bytes_per_token(const Engine& engine, double context) {
  const ModelConfig& c = engine.config();
  return decode_bytes_per_step(engine, context, 1, c.is_moe() ? static_cast<double>(c.router.num_experts_per_tok) : 0.0);
}

namespace {

std::string test_name(const char* kind, int tokens, int depth) {
  return kind + std::to_string(tokens) + (depth > 0 ? " @ d" + std::to_string(depth) : "");
}

// A session with room for depth + tokens, holding `depth` cached tokens.
Session filled_session(const Engine& engine, int tokens, int depth) {
  Session s(engine, std::max<int64_t>(engine.default_context(), int64_t{depth} + tokens));
  if (depth > 0) {
    const std::vector<int32_t> fill = random_ids(engine, depth, 3);
    for (int at = 0; at < depth; at += 2048)  // in chunks, as a long prompt would be fed
      s.forward(std::span<const int32_t>(fill.data() + at, static_cast<size_t>(std::min(2048, depth - at))));
  }
  return s;
}

// A distributed engine's collectives during the timed runs: reset before them, read after
// (`tokens` processed in `seconds` of wall time).
void comm_share(const Engine& engine, BenchResult& r, double tokens, double seconds) {
  r.ranks = engine.ranks();
  if (engine.ranks() == 1 || tokens <= 0 || seconds <= 0) return;
  const Engine::RankStats leader = engine.rank_stats()[0];
  r.comm_bytes_per_token = static_cast<double>(leader.comm_bytes) / tokens;
  r.comm_fraction = leader.comm_seconds / seconds;
}

}  // namespace

BenchResult bench_prefill(const Engine& engine, int tokens, int reps, int depth) {
  BenchResult r;
  r.test = test_name("pp", tokens, depth);
  r.tokens = tokens;
  const std::vector<int32_t> ids = random_ids(engine, tokens, 1);
  Session s = filled_session(engine, tokens, depth);  // filled once: each repetition drops back to depth
  double timed = 0;
  for (int rep = -1; rep < reps; ++rep) {  // rep -1: warm-up
    s.truncate(depth);
    if (rep == 0) engine.reset_comm_stats();
    const auto t0 = Clock::now();
    s.forward(ids);
    const double secs = seconds_since(t0);
    if (rep >= 0) {
      r.tps.push_back(tokens / secs);
      timed += secs;
    }
  }
  comm_share(engine, r, static_cast<double>(tokens) * reps, timed);
  finish(r);
  return r;
}

BenchResult bench_decode(const Engine& engine, int tokens, int reps, int depth) {
  BenchResult r;
  r.test = test_name("tg", tokens, depth);
  r.tokens = tokens;
  const std::vector<int32_t> ids = random_ids(engine, tokens, 2);
  runtime::ScopedOpCounting counting;  // (one process: a distributed engine's ranks count their own)
  Session s = filled_session(engine, tokens, depth);
  double timed = 0;
  for (int rep = -1; rep < reps; ++rep) {
    s.truncate(depth);
    if (rep == 0) engine.reset_comm_stats();
    const auto t0 = Clock::now();
    for (int i = 0; i < tokens; ++i) s.forward(std::span<const int32_t>(&ids[static_cast<size_t>(i)], 1));
    const double secs = seconds_since(t0);
    if (rep >= 0) {
      r.tps.push_back(tokens / secs);
      timed += secs;
    }
  }
  comm_share(engine, r, static_cast<double>(tokens) * reps, timed);
  finish(r);
  r.bytes_per_token = decode_bytes_per_token(engine, depth + tokens / 2.0);  // mean cached length during the run
  r.gbps = r.bytes_per_token * r.mean / 1e9;
  // The ops of one step: those recorded into the replayed graph (CUDA), else one more plain step's.
  runtime::OpCounts& n = counting.counts();
  if (n.recorded.kernels > 0) {
    r.ops_per_token = n.recorded_ops;
    r.launches_per_token = static_cast<int64_t>(n.recorded.kernels);
  } else if (tokens > 0) {
    s.truncate(depth);
    n = {};
    s.forward(std::span<const int32_t>(ids.data(), 1));
    r.ops_per_token = n.total();
  }
  return r;
}

SpecBench bench_speculative(const Engine& engine, Session* draft, std::span<const int32_t> prompt, SpecKind spec, int spec_max,
                            int tokens, int reps, const Tokenizer* tokenizer, std::span<const int32_t> eos_ids) {
  using detail::cat;
  if (spec == SpecKind::none) throw Error("bench", "a speculative test needs a kind of speculation (ngram, draft or mtp)");
  if (spec == SpecKind::draft && !draft) throw Error("bench", "speculation with a draft model needs the draft model's session");
  if (prompt.empty()) throw Error("bench", "a speculative test needs a prompt");
  if (tokens < 1 || reps < 1) throw Error("bench", cat("a speculative test needs tokens and repetitions, found ", tokens, " and ", reps));
  const int64_t need = static_cast<int64_t>(prompt.size()) + tokens;
  if (draft && draft->context() < need)
    throw Error("bench", cat("the draft model's session holds ", draft->context(), " positions; the prompt and the tokens need ", need));
  // Without a tokenizer (random weights): one that knows no token; generate() decodes the ids to
  // nothing, and the text is never looked at.
  static const Tokenizer kNoText = Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {}, "merges": []}})", "bench");
  const Tokenizer& tok = tokenizer ? *tokenizer : kNoText;
  Session session(engine, std::max<int64_t>(engine.default_context(), need));
  SamplerParams greedy;
  greedy.temperature = 0;
  SpecBench r;
  const std::string name = "tg" + std::to_string(tokens);
  const char* kind = spec == SpecKind::ngram ? "ngram" : spec == SpecKind::draft ? "draft" : "mtp";
  r.spec.test = name + " spec " + kind;
  r.spec.spec = kind;
  r.plain.test = name + " prompt";
  r.plain.spec = "none";
  for (BenchResult* x : {&r.spec, &r.plain}) {
    x->tokens = tokens;
    x->ranks = engine.ranks();
  }
  int64_t produced = -1;  // tokens every run generates (greedy: the same in all of them)
  auto run = [&](bool speculate, bool timed) {
    GenerateOptions go;
    go.max_tokens = tokens;  // no stop strings: `tokens`, or fewer when the answer ends (an EOS id)
    go.eos_ids.assign(eos_ids.begin(), eos_ids.end());
    go.spec = speculate ? spec : SpecKind::none;
    go.spec_max = spec_max;
    go.draft = speculate && spec == SpecKind::draft ? draft : nullptr;
    session.reset();
    if (draft) draft->reset();
    Sampler sampler(greedy);
    const GenerateResult g = generate(session, tok, sampler, prompt, go, [](std::string_view) { return true; });
    if (produced < 0) produced = g.generated_tokens;
    if (g.generated_tokens != produced || (eos_ids.empty() && g.generated_tokens != tokens))
      throw Error("bench", cat("the ", speculate ? kind : "plain", " run stopped after ", g.generated_tokens, " of ", tokens,
                               " tokens (", g.finish_reason, "; the first run made ", produced, ")"));
    if (!timed) return;
    BenchResult& x = speculate ? r.spec : r.plain;
    x.tps.push_back(g.gen_tps());
    x.drafted += g.drafted_tokens;
    x.accepted += g.accepted_tokens;
    x.draft_seconds += g.draft_seconds;
    // The first token comes from the prefill's logits; each decode forward then yields one token
    // plus the drafts it accepted (the last token sampled is never fed).
    x.steps += std::max<int64_t>(0, g.generated_tokens - 1 - g.accepted_tokens);
  };
  for (int rep = -1; rep < reps; ++rep) {  // rep -1: warm-up; odd repetitions run the plain one first
    const bool spec_first = rep % 2 == 0 || rep < 0;
    run(spec_first, rep >= 0);
    run(!spec_first, rep >= 0);
  }
  for (BenchResult* x : {&r.spec, &r.plain}) x->tokens = static_cast<int>(produced);
  finish(r.spec);
  finish(r.plain);
  // Bytes: every decode forward reads the target's weights once and the cache so far (the mean
  // cached length during the run); the drafter's reads are not counted.
  const double per_forward = decode_bytes_per_token(engine, static_cast<double>(prompt.size()) + static_cast<double>(produced) / 2.0);
  for (BenchResult* x : {&r.spec, &r.plain}) {
    const double from_decode = static_cast<double>(reps) * std::max<double>(static_cast<double>(produced) - 1, 1);  // tokens that came from decode forwards
    x->bytes_per_token = x->steps > 0 ? per_forward * static_cast<double>(x->steps) / from_decode : per_forward;
    x->gbps = x->bytes_per_token * x->mean / 1e9;
  }
  return r;
}

BatchedBench bench_batched(const Engine& engine, int batch, int prompt, int tokens, int reps) {
  if (batch < 1) throw Error("bench", "the batch must hold at least one sequence");
  const ModelConfig& c = engine.config();
  const int64_t context = std::max<int64_t>(engine.default_context(), int64_t{prompt} + tokens);
  constexpr int64_t kStepTokens = 512;  // prefill chunks, all sequences together (as a server's budget)
  Batch runner(engine, {.max_tokens = std::max<int64_t>(kStepTokens, batch), .max_sequences = batch, .max_context = context,
                        .count_experts = c.is_moe()});
  std::vector<Session> sessions;
  for (int i = 0; i < batch; ++i) sessions.emplace_back(engine, context, /*workspace=*/false);
  std::vector<std::vector<int32_t>> prompts, gen;
  for (int i = 0; i < batch; ++i) {
    prompts.push_back(random_ids(engine, prompt, 100 + static_cast<uint64_t>(i)));
    gen.push_back(random_ids(engine, tokens, 200 + static_cast<uint64_t>(i)));
  }
  BatchedBench r;
  const std::string b = " b" + std::to_string(batch);
  r.prefill.test = "pp" + std::to_string(prompt) + b;
  r.prefill.tokens = prompt * batch;
  r.prefill.batch = batch;
  r.decode.test = test_name("tg", tokens, prompt) + b;
  r.decode.tokens = tokens * batch;
  r.decode.batch = batch;
  std::vector<BatchEntry> entries;
  int64_t expert_runs = 0, decode_steps = 0;
  for (int rep = -1; rep < reps; ++rep) {  // rep -1: warm-up
    for (Session& s : sessions) s.reset();
    // Prefill: the prompts in steps of at most kStepTokens tokens, each sequence's next piece.
    std::vector<size_t> fed(static_cast<size_t>(batch), 0);
    auto t0 = Clock::now();
    for (bool more = prompt > 0; more;) {
      entries.clear();
      int64_t room = runner.options().max_tokens;
      for (size_t i = 0; i < sessions.size() && room > 0; ++i) {
        const size_t n = std::min<size_t>(static_cast<size_t>(room), prompts[i].size() - fed[i]);
        if (n == 0) continue;
        entries.push_back({&sessions[i], std::span<const int32_t>(prompts[i]).subspan(fed[i], n)});
        fed[i] += n;
        room -= static_cast<int64_t>(n);
      }
      if (entries.empty()) break;
      runner.forward(entries);
      more = false;
      for (size_t i = 0; i < sessions.size(); ++i) more = more || fed[i] < prompts[i].size();
    }
    if (rep >= 0 && prompt > 0) r.prefill.tps.push_back(static_cast<double>(prompt) * batch / seconds_since(t0));
    // Decode: every sequence one token per step.
    const BatchStats before = runner.stats();
    t0 = Clock::now();
    for (int step = 0; step < tokens; ++step) {
      entries.clear();
      for (size_t i = 0; i < sessions.size(); ++i)
        entries.push_back({&sessions[i], std::span<const int32_t>(&gen[i][static_cast<size_t>(step)], 1)});
      runner.forward(entries);
    }
    const double secs = seconds_since(t0);
    if (rep >= 0 && tokens > 0) {
      r.decode.tps.push_back(static_cast<double>(tokens) * batch / secs);
      expert_runs += runner.stats().expert_runs - before.expert_runs;
      decode_steps += runner.stats().steps - before.steps;
    }
  }
  if (!r.prefill.tps.empty()) finish(r.prefill);
  if (!r.decode.tps.empty()) {
    finish(r.decode);
    const int64_t moe_layers = c.num_moe_layers();
    r.decode.experts_per_layer =
        moe_layers > 0 && decode_steps > 0 ? static_cast<double>(expert_runs) / static_cast<double>(decode_steps * moe_layers) : 0.0;
    // Mean cached length per sequence during the run, times the sequences.
    const double step_bytes = decode_bytes_per_step(engine, (prompt + tokens / 2.0) * batch, batch, r.decode.experts_per_layer);
    r.decode.bytes_per_token = step_bytes / batch;
    r.decode.gbps = r.decode.bytes_per_token * r.decode.mean / 1e9;
  }
  return r;
}

}  // namespace moerun
