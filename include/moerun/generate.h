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
// those the sampler accepts. ngram: prompt lookup (the tokens that followed the latest earlier
// occurrence of the last few tokens); draft: a smaller model with the same token ids
// (GenerateOptions::draft); mtp: DeepSeek-V3's multi-token-prediction layer (Session::mtp_draft).
// Greedy output is token for token what plain decoding gives. Sampled output has exactly the
// target model's distribution (speculative sampling, Leviathan et al. 2023; Sampler::verify) and a
// seed still decides every token, but the RNG is drawn differently (a verified row draws for the
// acceptance and maybe the residual), so the sampled text differs token-wise from the same seed
// without speculation while its distribution is the same.
enum class SpecKind : uint8_t { none, ngram, draft, mtp };

// A verification step runs at most this many positions (the fed token and its drafts): up to 16 rows
// every CPU kernel gives each row the bits it gives it alone, so greedy output cannot change.
inline constexpr int64_t kMaxDraft = 15;

struct GenerateOptions {
  int64_t max_tokens = 512;
  SpecKind spec = SpecKind::none;
  int64_t spec_max = 8;             // most draft tokens per step, in [1, kMaxDraft]
  // SpecKind::draft: a session of the draft model's engine, whose token ids are the target's
  // (check_draft_tokenizer; its logits may be wider or narrower: padded embeddings). Required for
  // draft (an Error without), unused otherwise. generate() keeps it in step with the tokens: on
  // entry it keeps its first min(draft->position(), tokens reused from `session`) tokens, taken as
  // the prompt's (true when the two sessions are always used together, as a Conversation does, or
  // for a fresh draft session), and on return it holds a prefix of the prompt and sampled tokens.
  // Its context should hold the prompt and max_tokens: drafting stops where it ends.
  Session* draft = nullptr;
  // SpecKind::draft and mtp: what drafting costs, in target decode steps per draft-model forward
  // (draft: k drafts take k forwards) or per MTP draft token; drafting pauses while the accepted
  // tokens per verification do not pay for it (docs: speculate.h's DraftPolicy). draft_step_cost()
  // and mtp_step_cost() estimate it. 0: measured with the clock when greedy (timing then decides
  // only when to draft, which cannot change greedy tokens); when sampling, not counted (so that
  // the seed alone decides the tokens), leaving only the rule that pauses drafts nothing accepts.
  double draft_cost = 0.0;
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
  double draft_seconds = 0;        // of gen_seconds, the time drafting took (a draft model's or MTP's forwards)
  double prompt_seconds = 0, gen_seconds = 0;
  double prompt_tps() const { return prompt_seconds > 0 ? prompt_tokens / prompt_seconds : 0; }
  double gen_tps() const { return gen_seconds > 0 ? generated_tokens / gen_seconds : 0; }
};

// Sampling defaults from generation_config.json (do_sample false: greedy; temperature, top_k,
// top_p, min_p, repetition_penalty), or SamplerParams{} when the file is absent.
SamplerParams sampling_defaults(const std::filesystem::path& model_dir);

// Throws Error unless `draft` gives every token id the token `target` gives it (same vocabulary
// size, same token text per id, same special tokens): the condition for SpecKind::draft.
void check_draft_tokenizer(const Tokenizer& target, const Tokenizer& draft);

// Estimates for GenerateOptions::draft_cost from the weight bytes one decode step reads (routed
// experts at num_experts_per_tok / n_routed_experts of theirs): one step of `draft` over one of
// `target`; the MTP layer (with the LM head it shares) over one step of `target` (0 without MTP).
double draft_step_cost(const Engine& target, const Engine& draft);
double mtp_step_cost(const Engine& target);

// Runs `prompt` through `session`, then samples until a stop condition. The session may already
// hold a prefix of the prompt: only the tokens past session.position() are prefilled (the caller
// makes sure what it holds is the prompt's start; Conversation does, by truncating the session to
// the common prefix). Every token comes from `sampler` (greedy too: the argmax after its penalties
// over the prompt and the tokens so far); the decode loop reads the session's logits in place.
// `on_text` receives each piece of text as it becomes final; returning false cancels. Throws Error
// before any work when the prompt is empty, shorter than what the session holds, or longer than
// the context, or when speculation's options are wrong (spec_max outside [1, kMaxDraft]; draft
// without a draft session, or with `session` itself).
GenerateResult generate(Session& session, const Tokenizer& tokenizer, Sampler& sampler, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const std::function<bool(std::string_view)>& on_text);

}  // namespace moerun
