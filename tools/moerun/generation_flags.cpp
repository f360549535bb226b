#include "generation_flags.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "cli_io.h"
#include "moerun/commands.h"
#include "moerun/error.h"
#include "validators.h"

namespace moerun::cli {

using detail::cat;

void SpecFlags::add_to(CLI::App* a, bool bench, std::function<void()> also) {
  const std::string what =
      bench ? "speculative decoding test: -n tokens decoded greedily after --spec-prompt's text with speculation (row "
              "\"tg<n> spec KIND\") and without (row \"tg<n> prompt\"), alternating per repetition; replaces the tg tests. "
              "Kinds: "
            : "speculative decoding: draft tokens cheaply, verify them in one forward, keep those the sampler picks; "
              "greedy output is token for token the same, sampled output has the same distribution (speculative "
              "sampling). ";
  a->add_option("--spec", spec,
                what + "ngram (prompt lookup: the tokens that followed the last few tokens' latest earlier occurrence), "
                       "draft (a smaller model with the same tokenizer, --draft-model), mtp (DeepSeek-V3's "
                       "multi-token-prediction layer, loaded for it), or none")
      ->check(CLI::IsMember({"none", "ngram", "draft", "mtp"}));
  a->add_option("--spec-max", spec_max, "with --spec: most draft tokens per step")->check(integer_in(1, kMaxDraft));
  a->add_option("--draft-model", draft_model,
                "the draft model's directory for --spec draft (implies it): the same tokenizer as the model, loaded "
                "with the same engine flags");
  // Usage errors (exit 2), found as the command line is parsed.
  a->parse_complete_callback([this, also = std::move(also)] {
    if (spec == "draft" && draft_model.empty())
      throw CLI::ValidationError("--spec", "--spec draft needs the draft model: --draft-model DIR");
    if (!draft_model.empty() && spec != "none" && spec != "draft")
      throw CLI::ValidationError("--draft-model", "a draft model goes with --spec draft, not --spec " + spec);
    if (also) also();
  });
}

SpecKind SpecFlags::kind() const {
  if (spec == "ngram") return SpecKind::ngram;
  if (spec == "mtp") return SpecKind::mtp;
  if (spec == "draft" || !draft_model.empty()) return SpecKind::draft;
  return SpecKind::none;
}

void SpecFlags::check_launch() const {
  const SpecKind k = kind();
  if (launch_size() > 1 && (k == SpecKind::draft || k == SpecKind::mtp))
    throw Error("--spec " + std::string(k == SpecKind::draft ? "draft" : "mtp"),
                "speculation with a draft model or MTP runs in one process (not under mpirun) for now; --spec ngram works there");
}

DraftModel load_draft_model(const std::string& dir, const Tokenizer& target_tokenizer, EngineOptions options,
                            int64_t target_context, bool context_override, bool quiet) {
  const auto t0 = std::chrono::steady_clock::now();
  // The tokenizer first: a draft that cannot share the target's ids is refused before its weights load.
  const Tokenizer tokenizer = Tokenizer::load(dir);
  try {
    check_draft_tokenizer(target_tokenizer, tokenizer);
  } catch (const Error& e) {
    throw Error("--draft-model " + dir, cat("its tokenizer differs from the model's: ", e.detail()));
  }
  Model model = Model::load(dir);
  DraftModel d;
  d.dir = dir;
  d.context = target_context;
  const int64_t max_positions = model.config().max_position_embeddings;
  if (!context_override && max_positions > 0) d.context = std::min(d.context, max_positions);
  options.context = d.context;
  options.context_override = context_override;
  options.mtp = false;
  options.progress = nullptr;
  if (!quiet) open_progress("# loading draft model " + dir + " ...");
  d.engine = std::make_unique<Engine>(Engine::from_model(std::move(model), options));
  if (!quiet) {
    char tail[160];
    std::snprintf(tail, sizeof tail, " done in %.2f s (%s, %lld-token context)",
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                  d.engine->config().architecture.c_str(), static_cast<long long>(d.context));
    close_progress(tail);
  }
  return d;
}

void GenerationFlags::add_to(CLI::App* a) {
  app = a;
  constexpr int64_t kMaxTokens = int64_t{1} << 31;
  a->add_option("-m,--model", model, "model directory (default: $MOERUN_MODEL or models/default)");
  a->add_option("-n,--n-predict", max_tokens, "most tokens to generate")->check(integer_in(1, kMaxTokens));
  spec.add_to(a);
  a->add_option("-t,--threads", threads, "CPU threads (default: one per hardware thread)")->check(thread_count());
  a->add_option("-c,--ctx", context, "context length in tokens (default: the model's, at most 4096)")->check(integer_in(1, kMaxTokens));
  a->add_flag("--ctx-override", context_override, "allow -c above the model's max_position_embeddings (output degrades)");
  a->add_option("--temp", temp, "temperature; 0 is greedy (default: generation_config.json)")->check(number_in(0.0, 100.0));
  a->add_option("--top-k", top_k, "keep the k most likely tokens; 0: off")->check(integer_in(0, INT32_MAX));
  a->add_option("--top-p", top_p, "nucleus sampling mass; 1: off")->check(number_in(0.0, 1.0));
  a->add_option("--min-p", min_p, "drop tokens below min-p times the best; 0: off")->check(number_in(0.0, 1.0));
  a->add_option("--repeat-penalty", repeat_penalty, "penalise repeated tokens (HF repetition_penalty); 1: off")->check(number_in(1e-6, 1e6));
  a->add_option("--presence-penalty", presence_penalty, "subtract from tokens already present")->check(number_in(-1e6, 1e6));
  a->add_option("--frequency-penalty", frequency_penalty, "subtract per earlier occurrence")->check(number_in(-1e6, 1e6));
  a->add_option("--repeat-last-n", repeat_last_n, "penalty window in tokens; -1: all")->check(integer_in(-1, 1 << 30));
  a->add_option("--seed", seed, "sampling seed (default: random); the same seed gives the same text")->check(seed_value());
  a->add_option("--stop", stop, "stop when this text appears (not printed); may be repeated");
  a->add_flag("--ignore-eos", ignore_eos, "keep generating past end-of-sequence tokens (until -n or a stop string)");
  a->add_flag("--parse-special", parse_special,
              "let special-token text in messages (\"<|im_end|>\") become control tokens (default: it is plain text)");
  a->add_option("--system", system, "system prompt");
  engine.add_to(a);
}

SamplerParams GenerationFlags::sampler_params(const std::string& model_dir) const {
  SamplerParams p = sampling_defaults(model_dir);
  if (app->count("--temp")) p.temperature = temp;
  if (app->count("--top-k")) p.top_k = top_k;
  if (app->count("--top-p")) p.top_p = top_p;
  if (app->count("--min-p")) p.min_p = min_p;
  if (app->count("--repeat-penalty")) p.repeat_penalty = repeat_penalty;
  if (app->count("--presence-penalty")) p.presence_penalty = presence_penalty;
  if (app->count("--frequency-penalty")) p.frequency_penalty = frequency_penalty;
  p.penalty_last_n = repeat_last_n;
  p.seed = app->count("--seed") ? seed : std::random_device{}();
  return p;
}

Conversation LoadedModel::conversation(const GenerationFlags& flags) const {
  ConversationOptions options;
  options.parse_special = flags.parse_special;
  Conversation c(tokenizer, chat_template, options);
  c.set_system(flags.system);
  return c;
}

GenerateOptions LoadedModel::generate_options(const GenerationFlags& flags, const SamplerParams& sampling, Session* draft_session) const {
  GenerateOptions go;
  go.max_tokens = flags.max_tokens;
  go.spec = flags.spec.kind();
  go.spec_max = flags.spec.spec_max;
  go.draft = go.spec == SpecKind::draft ? draft_session : nullptr;
  if (!sampling.greedy()) {  // (a clock must not decide sampled tokens)
    if (go.spec == SpecKind::draft && draft) go.draft_cost = draft_step_cost(engine, *draft->engine);
    if (go.spec == SpecKind::mtp) go.draft_cost = mtp_step_cost(engine);
  }
  go.stop = flags.stop;
  go.eos_ids = eos_ids;
  return go;
}

void check_mtp(const std::string& dir, const ModelConfig& config) {
  if (config.num_nextn_predict_layers > 0) return;
  throw Error(dir, cat("--spec mtp needs a multi-token-prediction (MTP) layer and this model has none (", config.architecture,
                       ", num_nextn_predict_layers 0; DeepSeek-V3 checkpoints carry one)"));
}

void follow_if_worker(const Engine& engine) {
  if (engine.leader()) return;
  engine.follow();
  throw WorkerDone{};
}

LoadedModel load_model(const GenerationFlags& flags, bool quiet) {
  quiet = quiet || launch_rank() != 0;  // the leader alone prints
  const std::string dir = flags.model.empty() ? default_model_dir() : flags.model;
  flags.spec.check_launch();
  const auto t0 = std::chrono::steady_clock::now();
  EngineOptions eo;
  eo.threads = flags.threads;
  eo.context = flags.context;
  eo.context_override = flags.context_override;
  flags.engine.apply(eo);
  eo.mtp = flags.spec.kind() == SpecKind::mtp;
  Model model = Model::load(dir);
  if (eo.mtp) check_mtp(dir, model.config());
  if (flags.context_override && flags.context > model.config().max_position_embeddings)
    std::fprintf(stderr, "moerun: warning: -c %lld is above the model's max_position_embeddings (%lld): output past it degrades\n",
                 static_cast<long long>(flags.context), static_cast<long long>(model.config().max_position_embeddings));
  if (!quiet) {
    open_progress("# loading " + dir + " ...");
    // Bars (on a terminal, for steps over a second) over the "# loading" line: reading the weights
    // from disk, then converting them (--quant, FP8 dequantization) on all threads.
    eo.progress = [](std::string_view stage, uint64_t done, uint64_t total) { draw_progress(stage, done, total); };
    // Zero-copy weights are read by the first tokens otherwise, with no sign of progress; read them
    // now, with a bar. Quantized weights are not: the conversion reads every source byte anyway
    // (overlapping the disk with the work) and its bar shows it.
    if (isatty(STDERR_FILENO) && eo.quant == WeightQuant::none)
      model.prefetch([](uint64_t done, uint64_t total) { draw_progress("reading weights", done, total); });
  }
  Engine engine = Engine::from_model(std::move(model), eo);
  follow_if_worker(engine);
  LoadedModel m{dir, std::move(engine), Tokenizer::load(dir), std::nullopt, {}, std::nullopt};
  const ModelFiles& files = m.engine.model().files();
  if (files.has_chat_template) m.chat_template = ChatTemplate::load(dir);
  m.eos_ids = m.tokenizer.eos_ids();
  for (int64_t id : m.engine.config().eos_token_ids)
    if (std::find(m.eos_ids.begin(), m.eos_ids.end(), id) == m.eos_ids.end()) m.eos_ids.push_back(static_cast<int32_t>(id));
  if (flags.ignore_eos) m.eos_ids.clear();
  if (!quiet) {
    char tail[256];
    std::snprintf(tail, sizeof tail, " done in %.2f s (%s, %lld-token context, %s)",
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                  m.engine.config().architecture.c_str(), static_cast<long long>(m.engine.default_context()),
                  m.engine.backend() == BackendKind::cuda ? "CUDA" : "CPU");
    close_progress(tail);
  }
  report_backend_note(m.engine);
  if (flags.spec.kind() == SpecKind::draft) {
    EngineOptions deo = eo;
    deo.progress = nullptr;
    m.draft = load_draft_model(flags.spec.draft_model, m.tokenizer, deo, m.engine.default_context(), flags.context_override, quiet);
  }
  return m;
}

}  // namespace moerun::cli
