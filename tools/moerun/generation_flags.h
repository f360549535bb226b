#pragma once
// Flags shared by `run` and `chat`: the model, threads, context and the sampling knobs (flags given
// on the command line override generation_config.json's defaults).

#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "engine_flags.h"
#include "moerun/chat_template.h"
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

struct LoadedModel;
// Text a user typed, encoded as plain text: no added token ("<|im_end|>") is recognised in it unless
// `parse_special`.
std::vector<int32_t> user_text_ids(const Tokenizer& tokenizer, const std::string& text, bool parse_special);
// The token ids of a conversation's prompt. Text from the messages (what a user typed, a /load'ed
// file) is encoded as plain text: "<|im_end|>" in it stays text, only the chat template's own markup
// yields control tokens; `parse_special` (--parse-special) parses the whole prompt as transformers
// does. Without a chat template the turns are joined by newlines, as plain text likewise.
std::vector<int32_t> prompt_ids(const LoadedModel& m, const ChatJson& messages, bool parse_special);

// What run and chat load: the engine, its tokenizer and (when the model has one) its chat template.
struct LoadedModel {
  std::string dir;
  Engine engine;
  Tokenizer tokenizer;
  std::unique_ptr<ChatTemplate> chat_template;  // null when the model has none
  std::vector<int32_t> eos_ids;                 // tokenizer's and config.json's
};

// Loads with a progress line on stderr unless `quiet`.
LoadedModel load_model(const GenerationFlags& flags, bool quiet);

}  // namespace moerun::cli
