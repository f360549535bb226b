// moerun bench: tokens/s in llama-bench's conventions, plus bytes per token, GB/s and the fraction of
// a read-bandwidth ceiling measured at start-up (moerun/bench.h: the measurements, the rows and their
// formats). Markdown on stdout (or JSON / CSV); notes on stderr.

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>

#include "moerun/bench.h"
#include "cli_io.h"
#include "engine_flags.h"
#include "generation_flags.h"
#include "moerun/chat_template.h"
#include "moerun/conversation.h"
#include "moerun/commands.h"
#include "moerun/error.h"
#include "moerun/model.h"
#include "moerun/plan.h"
#include "validators.h"

namespace moerun::cli {
namespace {

struct BenchOptions {
  std::string model, synthetic, output = "md";
  std::vector<int> prompt{512}, gen{128}, depth{0}, batch;
  std::vector<int> threads{static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))};
  int reps = 5, layers = 0, experts = 0;
  uint64_t seed = 0;
  EngineFlags engine;
  SpecFlags spec;           // --spec: the speculative test (rows "tg<n> spec KIND" and "tg<n> prompt")
  std::string spec_prompt;  // its text
  bool ignore_eos = false;
};

// A synthetic model's "prompt" for --spec: seeded random ids (there is no tokenizer).
constexpr int kSyntheticPromptTokens = 128;

// The speculative test's prompt: the text of --spec-prompt as `run` makes it a prompt (a user
// message through the chat template when the model has one, else the text as it is), or, for a
// synthetic model, seeded random ids.
std::vector<int32_t> spec_prompt_ids(const BenchOptions& opt, const Engine& engine, const Tokenizer* tokenizer,
                                     const std::string& dir) {
  if (!tokenizer) {
    Rng rng(opt.seed + 11);
    std::vector<int32_t> ids(kSyntheticPromptTokens);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng.next() % static_cast<uint64_t>(engine.config().vocab_size));
    return ids;
  }
  const std::string text = read_file(opt.spec_prompt, prompt_bytes_cap(engine.default_context()), "the longest prompt read");
  std::optional<ChatTemplate> chat_template;
  if (engine.model().files().has_chat_template) chat_template = ChatTemplate::load(dir);
  Conversation conversation(*tokenizer, chat_template);
  if (!chat_template) {  // the text continued, as run does for a model without a template
    ConversationOptions co = conversation.options();
    co.chat.add_generation_prompt = false;
    conversation.set_options(co);
  }
  conversation.add_message("user", text);
  std::vector<int32_t> ids = conversation.prompt_ids();
  if (ids.empty()) throw Error(opt.spec_prompt, "the prompt is empty");
  return ids;
}

// The speculative test's rows for one engine: for each -n, the speculating row and its plain row.
void append_spec_rows(const Engine& engine, const EngineOptions& eo, const BenchOptions& opt, int threads, double ceiling,
                      double gemm_ceiling, std::vector<BenchRow>& rows) {
  const std::string dir = opt.model.empty() ? default_model_dir() : opt.model;
  std::optional<Tokenizer> tokenizer;
  if (opt.synthetic.empty()) tokenizer = Tokenizer::load(dir);
  const std::vector<int32_t> prompt = spec_prompt_ids(opt, engine, tokenizer ? &*tokenizer : nullptr, dir);
  const int most = *std::max_element(opt.gen.begin(), opt.gen.end());
  const int64_t need = static_cast<int64_t>(prompt.size()) + most;
  std::fprintf(stderr, "# speculative test: a %zu-token prompt%s, --spec %s, --spec-max %lld\n", prompt.size(),
               tokenizer ? (" (" + opt.spec_prompt + ")").c_str() : " of random ids (random weights: acceptance means nothing)",
               opt.spec.spec.c_str(), static_cast<long long>(opt.spec.spec_max));
  std::optional<DraftModel> draft;
  std::optional<Session> draft_session;
  if (opt.spec.kind() == SpecKind::draft) {
    draft = load_draft_model(opt.spec.draft_model, *tokenizer, eo, std::max(engine.default_context(), need),
                             /*context_override=*/true, /*quiet=*/false);
    draft_session.emplace(draft->session());
  }
  // The answer ends where the model ends it (its EOS ids), as run would, unless --ignore-eos.
  std::vector<int32_t> eos;
  if (tokenizer && !opt.ignore_eos) {
    eos = tokenizer->eos_ids();
    for (int64_t id : engine.config().eos_token_ids)
      if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(static_cast<int32_t>(id));
  }
  for (int n : opt.gen) {
    if (n <= 0) continue;
    const SpecBench r = bench_speculative(engine, draft_session ? &*draft_session : nullptr, prompt, opt.spec.kind(),
                                          static_cast<int>(opt.spec.spec_max), n, opt.reps, tokenizer ? &*tokenizer : nullptr, eos);
    rows.push_back(bench_row(engine, threads, r.spec, ceiling, gemm_ceiling));
    rows.push_back(bench_row(engine, threads, r.plain, ceiling, gemm_ceiling));
  }
}

// The rows of every test for one engine (one thread count), after measuring its ceilings.
void append_rows(const Engine& engine, const EngineOptions& eo, const BenchOptions& opt, int threads, std::vector<BenchRow>& rows) {
  const bool on_gpu = engine.backend() == BackendKind::cuda;
  const BandwidthCeiling ceiling = on_gpu ? measure_device_bandwidth() : measure_read_bandwidth(threads);
  const double gemm_ceiling = on_gpu ? measure_device_gemm_tflops() : 0.0;
  if (on_gpu) {
    std::fprintf(stderr, "# device bandwidth ceiling: %.1f GB/s (device-to-device copy, read + write bytes, best of 5)\n", ceiling.gbps);
    std::fprintf(stderr, "# device GEMM ceiling: %.1f TFLOP/s (cuBLAS bf16, fp32 accumulation)\n", gemm_ceiling);
  } else {
    std::fprintf(stderr, "# read bandwidth ceiling: %.1f GB/s (%d thread%s, %llu MiB buffer, best of 5)\n", ceiling.gbps,
                 threads, threads == 1 ? "" : "s", static_cast<unsigned long long>(ceiling.bytes >> 20));
  }

  if (!opt.batch.empty()) {  // llama-batched-bench: -p prompt tokens per sequence, -n decode steps
    for (int b : opt.batch)
      for (int p : opt.prompt)
        for (int n : opt.gen) {
          const BatchedBench r = bench_batched(engine, b, p, n, opt.reps);
          if (p > 0) rows.push_back(bench_row(engine, threads, r.prefill, ceiling.gbps, gemm_ceiling));
          if (n > 0) rows.push_back(bench_row(engine, threads, r.decode, ceiling.gbps, gemm_ceiling));
        }
    return;
  }
  for (int d : opt.depth) {
    for (int n : opt.prompt)
      if (n > 0) rows.push_back(bench_row(engine, threads, bench_prefill(engine, n, opt.reps, d), ceiling.gbps, gemm_ceiling));
    if (opt.spec.kind() != SpecKind::none) {  // the -n sizes are the speculative test's
      append_spec_rows(engine, eo, opt, threads, ceiling.gbps, gemm_ceiling, rows);
      continue;
    }
    for (int n : opt.gen)
      if (n > 0) rows.push_back(bench_row(engine, threads, bench_decode(engine, n, opt.reps, d), ceiling.gbps, gemm_ceiling));
  }
}

}  // namespace

void add_bench_command(CLI::App& root, std::vector<Command>& commands) {
  auto opt = std::make_shared<BenchOptions>();
  CLI::App* app = root.add_subcommand("bench", "Measure prefill (pp) and decode (tg) tokens/s, llama-bench style");
  app->add_option("-m,--model", opt->model, "model directory (default: $MOERUN_MODEL or models/default)");
  constexpr int kMaxTokens = 1 << 24;
  app->add_option("-p,--n-prompt", opt->prompt, "prefill test sizes (pp); 0 skips")->delimiter(',')->check(integer_in(0, kMaxTokens));
  app->add_option("-n,--n-gen", opt->gen, "decode test sizes (tg); 0 skips")->delimiter(',')->check(integer_in(0, kMaxTokens));
  app->add_option("-d,--n-depth", opt->depth, "cached tokens before each test (llama-bench's -d)")->delimiter(',')->check(integer_in(0, kMaxTokens));
  app->add_option("-b,--batch", opt->batch,
                  "parallel decode (llama-batched-bench): sequences decoded together, e.g. 1,2,4,8,16; each is prefilled "
                  "with -p tokens, then all decode -n steps in one batch (rows pp<p> b<B> and tg<n> @ d<p> b<B>: aggregate t/s)")
      ->delimiter(',')->check(integer_in(1, 4096));
  app->add_option("-r,--repetitions", opt->reps, "timed repetitions per test (after one warm-up)")->check(integer_in(1, 1000));
  app->add_option("-t,--threads", opt->threads, "CPU thread counts, e.g. 1,2 (default: one per hardware thread)")
      ->delimiter(',')
      ->check(thread_count());
  app->add_option("-o,--output", opt->output, "output format")->check(CLI::IsMember({"md", "json", "csv"}));
  app->add_option("--synthetic", opt->synthetic, "benchmark a config.json's architecture with random weights made in memory");
  app->add_option("--layers", opt->layers, "with --synthetic: cap num_hidden_layers")->check(integer_in(1, 4096));
  app->add_option("--experts", opt->experts, "with --synthetic: cap the routed experts per layer")->check(integer_in(1, 65536));
  app->add_option("--seed", opt->seed, "with --synthetic: seed of the random weights")->check(seed_value());
  opt->spec.add_to(app, /*bench=*/true, [opt, app] {
    const bool spec = opt->spec.kind() != SpecKind::none;
    if (!spec && app->count("--spec-prompt")) throw CLI::ValidationError("--spec-prompt", "goes with --spec ngram, draft or mtp");
    if (!spec) return;
    if (opt->synthetic.empty() && opt->spec_prompt.empty())
      throw CLI::ValidationError("--spec", "a speculative test needs a text to decode after: --spec-prompt FILE (acceptance depends on it)");
    if (!opt->synthetic.empty() && !opt->spec_prompt.empty())
      throw CLI::ValidationError("--spec-prompt", "with --synthetic the speculative test runs on random ids (there is no tokenizer): leave it out");
    if (!opt->synthetic.empty() && opt->spec.kind() == SpecKind::draft)
      throw CLI::ValidationError("--spec", "--spec draft needs a real model and its tokenizer, not --synthetic");
    if (!opt->batch.empty()) throw CLI::ValidationError("--spec", "the speculative test decodes one sequence: leave out -b");
    if (std::any_of(opt->depth.begin(), opt->depth.end(), [](int d) { return d > 0; }))
      throw CLI::ValidationError("--spec", "the speculative test starts from its prompt: leave out -d");
  });
  app->add_option("--spec-prompt", opt->spec_prompt,
                  "with --spec: the text the speculative test decodes after (tokenized as run does, through the chat "
                  "template when the model has one); up to -n tokens are decoded greedily, until the model's EOS (--ignore-eos: "
                  "exactly -n). With --synthetic leave "
                  "it out: the prompt is 128 seeded random ids, and on random weights the rows measure what speculation "
                  "costs per step, not what it gains (--spec mtp, ngram)");
  app->add_flag("--ignore-eos", opt->ignore_eos, "with --spec-prompt: decode exactly -n tokens, past the answer's end");
  opt->engine.add_to(app);
  commands.push_back({app, [opt] {
    opt->spec.check_launch();
    std::vector<BenchRow> rows;
    for (const int threads : opt->threads) {
      // One engine per thread count (its pool is sized at creation); the weights map again, cheaply.
      EngineOptions eo;
      eo.threads = threads;
      eo.context_override = true;  // -d and -p may pass the trained context: random ids measure speed, not text
      opt->engine.apply(eo);
      eo.mtp = opt->spec.kind() == SpecKind::mtp;
      // A bar on a terminal while --quant or FP8 dequantization converts the weights (over a second).
      eo.progress = [](std::string_view stage, uint64_t done, uint64_t total) { draw_progress(stage, done, total); };
      Model model = [&] {
        if (opt->synthetic.empty()) return Model::load(opt->model.empty() ? default_model_dir() : opt->model);
        ConfigOverrides o;
        if (opt->layers > 0) o.num_hidden_layers = opt->layers;
        if (opt->experts > 0) o.max_routed_experts = opt->experts;
        const ModelConfig config = load_model_config(opt->synthetic, o);
        if (eo.mtp) check_mtp(opt->synthetic, config);
        // Planned before the random weights are made: what cannot fit is refused at once.
        if (const MemoryPlan plan = plan_memory(config, eo, WeightSource::synthetic); eo.memory_check && !plan.fits)
          throw Error("memory", plan.refusal());
        if (launch_rank() == 0) std::fprintf(stderr, "# making random weights for %s (%lld layers)\n", opt->synthetic.c_str(),
                     static_cast<long long>(config.num_hidden_layers));
        // Under mpirun each rank fills only the weights it holds.
        // --spec mtp: with the multi-token-prediction layer the config describes.
        return Model::synthetic(config, opt->seed, /*lazy=*/launch_size() > 1, /*mtp=*/eo.mtp);
      }();
      if (eo.mtp && opt->synthetic.empty()) check_mtp(opt->model.empty() ? default_model_dir() : opt->model, model.config());
      // Synthetic weights were planned before they were made; planned again now, they would be
      // counted twice (they already hold the memory the plan would look for).
      if (!opt->synthetic.empty()) eo.memory_check = false;
      const Engine engine = Engine::from_model(std::move(model), eo);
      report_backend_note(engine);
      if (!engine.leader()) {  // a worker rank: the leader runs the benchmark, this rank follows it
        engine.follow();
        continue;
      }
      append_rows(engine, eo, *opt, threads, rows);
      // What each rank holds (a collective: the workers answer from follow()).
      for (const Engine::RankStats& r : engine.rank_stats())
          std::fprintf(stderr, "# rank %d of %d: weights_bytes=%llu rss_bytes=%llu peak_rss_bytes=%llu (%s)\n", r.rank, engine.ranks(),
                       static_cast<unsigned long long>(r.weight_bytes), static_cast<unsigned long long>(r.rss_bytes),
                       static_cast<unsigned long long>(r.peak_rss_bytes), r.rank == 0 ? engine.partition_summary().c_str() : "");
      if (engine.backend() == BackendKind::cuda) break;  // thread counts are a CPU matter
    }
    if (launch_rank() != 0) return 0;
    const BenchFormat format = opt->output == "json" ? BenchFormat::json : opt->output == "csv" ? BenchFormat::csv : BenchFormat::markdown;
    const std::string out = format_bench(rows, format);
    write_out(out);
    return 0;
  }});
}

}  // namespace moerun::cli
