#pragma once
// Flags shared by `run` and `chat`: the model, threads, context and the sampling knobs (flags given
// on the command line override generation_config.json's defaults).

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

struct GenerationFlags {
  std::string model;
  int threads = 0;
  int64_t context = 0;
  bool context_override = false;
  int64_t max_tokens = 512;
  std::string spec = "none";  // speculative decoding: none or ngram (prompt lookup)
  int64_t spec_max = 8;
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

  // A conversation with this model's tokenizer and template (the message text plain unless
  // --parse-special), its system prompt --system.
  Conversation conversation(const GenerationFlags& flags) const;
  // The options generate() takes from the flags: -n, --stop, and the EOS ids.
  GenerateOptions generate_options(const GenerationFlags& flags) const;
};

// Loads with a progress line on stderr unless `quiet`. On a worker rank of a distributed run
// (mpirun), follows the leader and then throws WorkerDone.
LoadedModel load_model(const GenerationFlags& flags, bool quiet);

// Thrown on a worker rank once it has followed the leader's engine to its end: main exits 0, having
// printed nothing (the leader owns the terminal).
struct WorkerDone {};
// A worker rank (mpirun, rank > 0) follows the leader and throws WorkerDone; the leader returns.
void follow_if_worker(const Engine& engine);

}  // namespace moerun::cli
