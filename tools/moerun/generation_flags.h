#pragma once
// Flags shared by `run` and `chat`: the model, threads, context and the sampling knobs (flags given
// on the command line override generation_config.json's defaults).

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "engine_flags.h"
#include "moerun/chat_template.h"
#include "moerun/conversation.h"
#include "moerun/engine.h"
#include "moerun/generate.h"
#include "moerun/sampler.h"
#include "moerun/tokenizer.h"

namespace moerun::cli {

// Speculative decoding's flags, shared by run, chat and bench: --spec, --spec-max, --draft-model.
// --draft-model without --spec means --spec draft; --spec draft needs --draft-model (a usage error
// otherwise, as is --draft-model with another --spec).
struct SpecFlags {
  std::string spec = "none";  // none, ngram, draft or mtp
  int64_t spec_max = 8;
  std::string draft_model;    // the draft model's directory (--spec draft)

  // `bench`: the help of --spec says what bench measures instead of what run and chat do.
  // `also`: more usage checks of the command, run with these after parsing (CLI::ValidationError).
  void add_to(CLI::App* app, bool bench = false, std::function<void()> also = nullptr);
  SpecKind kind() const;  // resolved: --draft-model alone is draft
  // Throws Error when this speculation cannot run in a distributed launch (mpirun): a draft model
  // or MTP needs one process for now.
  void check_launch() const;
};

// A draft model for --spec draft, loaded with the target's engine options: its tokenizer is checked
// against the target's first (check_draft_tokenizer: every id the same token), then the weights.
// `target_context`: the target session's context; the draft's sessions get it, capped by the
// draft model's max_position_embeddings unless `context_override`. Quiet unless `!quiet`.
struct DraftModel {
  std::string dir;
  std::unique_ptr<Engine> engine;
  int64_t context = 0;  // what draft sessions get
  Session session() const { return Session(*engine, context); }
};
DraftModel load_draft_model(const std::string& dir, const Tokenizer& target_tokenizer, EngineOptions options,
                            int64_t target_context, bool context_override, bool quiet);

struct GenerationFlags {
  std::string model;
  int threads = 0;
  int64_t context = 0;
  bool context_override = false;
  int64_t max_tokens = 512;
  SpecFlags spec;  // speculative decoding: --spec, --spec-max, --draft-model
  float temp = 0, top_p = 0, min_p = 0, repeat_penalty = 0, presence_penalty = 0, frequency_penalty = 0;
  int top_k = 0, repeat_last_n = 64;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool parse_special = false;
  std::string system;
  EngineFlags engine;
  CLI::App* app = nullptr;

  void add_to(CLI::App* app);
  // generation_config.json's defaults with every flag the user gave on top. Seed: --seed, else random.
  SamplerParams sampler_params(const std::string& model_dir) const;
};

// What run and chat load: the engine, its tokenizer and (when the model has one) its chat template.
struct LoadedModel {
  std::string dir;
  Engine engine;
  Tokenizer tokenizer;
  std::optional<ChatTemplate> chat_template;  // none when the model has none
  std::vector<int32_t> eos_ids;               // tokenizer's and config.json's (none with --ignore-eos)
  std::optional<DraftModel> draft;            // --spec draft: the draft model (none otherwise)

  // A conversation with this model's tokenizer and template (the message text plain unless
  // --parse-special), its system prompt --system.
  Conversation conversation(const GenerationFlags& flags) const;
  // The options generate() takes from the flags: -n, --stop, --spec, --spec-max and the EOS ids;
  // `draft`: the draft model's session (--spec draft; made by draft->session() beside the target's).
  // Sampling (not greedy) also gets the drafter's cost estimated from the weights a step reads (greedy
  // decoding measures it: generate.h).
  GenerateOptions generate_options(const GenerationFlags& flags, const SamplerParams& sampling, Session* draft_session = nullptr) const;
};

// Loads with a progress line on stderr unless `quiet`. On a worker rank of a distributed run
// (mpirun), follows the leader and then throws WorkerDone. --spec mtp loads the model's
// multi-token-prediction layer (Error when it has none); --spec draft loads the draft model too.
LoadedModel load_model(const GenerationFlags& flags, bool quiet);

// --spec mtp: Error naming the model unless its config has a multi-token-prediction layer
// (num_nextn_predict_layers > 0), checked before the weights are prepared.
void check_mtp(const std::string& dir, const ModelConfig& config);

// Thrown on a worker rank once it has followed the leader's engine to its end: main exits 0, having
// printed nothing (the leader owns the terminal).
struct WorkerDone {};
// A worker rank (mpirun, rank > 0) follows the leader and throws WorkerDone; the leader returns.
void follow_if_worker(const Engine& engine);

}  // namespace moerun::cli
