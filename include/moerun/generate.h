#pragma once
// Generation: prompt ids -> streamed text, through a Session, a Sampler and the UTF-8-safe
// StreamDecoder. Stops on any EOS id, on a stop string (matched on the text across token
// boundaries and never emitted), or after max_tokens.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moerun/engine.h"
#include "moerun/sampler.h"
#include "moerun/tokenizer.h"

namespace moerun {

// Speculative decoding: draft tokens cheaply, verify them in one forward over all of them, keep
// those the sampler would have picked. ngram: prompt lookup (the tokens that followed the latest
// earlier occurrence of the last few tokens); draft: a smaller model with the same token ids
// (GenerateOptions::draft); mtp: DeepSeek-V3's multi-token-prediction layer (Session::mtp_draft).
// Greedy output is token for token what plain decoding gives; sampled output has exactly the
// target model's distribution (speculative sampling, Leviathan et al. 2023).
enum class SpecKind : uint8_t { none, ngram, draft, mtp };

// A verification step runs at most this many positions (the fed token and its drafts): up to 16 rows
// every CPU kernel gives each row the bits it gives it alone, so greedy output cannot change.
inline constexpr int64_t kMaxDraft = 15;

struct GenerateOptions {
  int64_t max_tokens = 512;
  SpecKind spec = SpecKind::none;
  int64_t spec_max = 8;             // most draft tokens per step, in [1, kMaxDraft]
  // SpecKind::draft: a session of the draft model's engine (the caller's; its tokens are brought up
  // to date with the prompt and the sampled tokens here). Required for draft, unused otherwise.
  Session* draft = nullptr;
  std::vector<std::string> stop;    // stop strings
  std::vector<int32_t> eos_ids;     // token ids that end generation (not emitted)
  bool skip_special_tokens = true;  // in the emitted text
  // Polled between prefill micro-batches and before every decode step: returning true stops
  // generation there with finish_reason "interrupted" (a signal handler's flag, a closed client).
  std::function<bool()> interrupted;
};

struct GenerateResult {
  std::string text;                // everything emitted
  // Why generation ended:
  //   "eos"         an EOS id was sampled (it is in `tokens`, not in `text`);
  //   "stop"        a stop string appeared in the text (neither it nor anything after is emitted);
  //   "length"      max_tokens were sampled;
  //   "context"     the session's cache is full: the last sampled token has no position left to be
  //                 fed back for the next one (session.position() == session.context()), so fewer
  //                 than max_tokens were sampled;
  //   "cancelled"   on_text returned false;
  //   "interrupted" options.interrupted said so (before or during the prefill, or between tokens).
  std::string finish_reason;
  int64_t prompt_tokens = 0;       // prefilled by this call
  int64_t cached_tokens = 0;       // prompt tokens the session already held (reused, not prefilled)
  int64_t generated_tokens = 0;    // sampled tokens, EOS included
  std::vector<int32_t> tokens;     // the sampled ids, EOS included
  int64_t drafted_tokens = 0;      // speculation: draft tokens verified
  int64_t accepted_tokens = 0;     // of them, those the sampler picked (each saves a decode step)
  double prompt_seconds = 0, gen_seconds = 0;
  double prompt_tps() const { return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0; }
  double gen_tps() const { return gen_seconds > 0 ? generated_tokens / gen_seconds : 0; }
};

// Sampling defaults from generation_config.json (do_sample false: greedy; temperature, top_k,
// top_p, min_p, repetition_penalty), or SamplerParams{} when the file is absent.
SamplerParams sampling_defaults(const std::filesystem::path& model_dir);

// Runs `prompt` through `session`, then samples until a stop condition. The session may already
// hold a prefix of the prompt: only the tokens past session.position() are prefilled (the caller
// makes sure what it holds is the prompt's start; Conversation does, by truncating the session to
// the common prefix). Every token comes from `sampler` (greedy too: the argmax after its penalties
// over the prompt and the tokens so far); the decode loop reads the session's logits in place.
// `on_text` receives each piece of text as it becomes final; returning false cancels. Throws Error
// before any work when the prompt is empty, shorter than what the session holds, or longer than
// the context.
GenerateResult generate(Session& session, const Tokenizer& tokenizer, Sampler& sampler, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const std::function<bool(std::string_view)>& on_text);

}  // namespace moerun
