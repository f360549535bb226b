#include "moerun/generate.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "io/json_util.h"
#include "moerun/error.h"
#include "moerun/weights.h"
#include "runtime/speculate.h"
#include "runtime/stop_matcher.h"
#include "util/strings.h"

namespace moerun {

using detail::cat;
using runtime::StopMatcher;

SamplerParams sampling_defaults(const std::filesystem::path& model_dir) {
  SamplerParams p;
  p.temperature = 0.0f;  // transformers generates greedily unless the model's file says do_sample
  const std::filesystem::path file = io::find_regular_file(model_dir / "generation_config.json");  // Error if not a file
  if (file.empty()) return p;
  const io::Json j = io::parse_json_text(io::read_text_file(file), file.string());
  const io::JsonFields f(j, file.string());
  const double temperature = f.f64_or("temperature", 1.0), top_p = f.f64_or("top_p", 1.0), min_p = f.f64_or("min_p", 0.0),
               penalty = f.f64_or("repetition_penalty", 1.0);
  const int64_t top_k = f.i64_or("top_k", 0);
  if (!(temperature >= 0) || temperature > 1e6) f.fail("temperature", cat("must be 0 or more, found ", temperature));
  if (top_k < 0 || top_k > INT32_MAX) f.fail("top_k", cat("must be 0 (off) or a positive count, found ", top_k));
  if (!(top_p > 0 && top_p <= 1)) f.fail("top_p", cat("must be in (0, 1], found ", top_p));
  if (!(min_p >= 0 && min_p <= 1)) f.fail("min_p", cat("must be in [0, 1], found ", min_p));
  if (!(penalty > 0) || penalty > 1e6) f.fail("repetition_penalty", cat("must be positive, found ", penalty));
  p.temperature = static_cast<float>(temperature);
  p.top_k = static_cast<int32_t>(top_k);
  p.top_p = static_cast<float>(top_p);
  p.min_p = static_cast<float>(min_p);
  p.repeat_penalty = static_cast<float>(penalty);
  // HF generates greedily unless do_sample is set, whatever the temperature says.
  if (!f.boolean_or("do_sample", false)) p.temperature = 0.0f;
  return p;
}

void check_draft_tokenizer(const Tokenizer& target, const Tokenizer& draft) {
  if (target.vocab_size() != draft.vocab_size())
    throw Error("draft model", cat("its tokenizer has ", draft.vocab_size(), " tokens, the model's ", target.vocab_size(),
                                   ": the draft must share the model's token ids"));
  auto token = [](const Tokenizer& t, int32_t id) -> std::optional<std::string> {
    try {
      return t.id_to_token(id);
    } catch (const Error&) {
      return std::nullopt;  // an id without a token (a hole in the vocabulary)
    }
  };
  for (int64_t i = 0; i < target.vocab_size(); ++i) {
    const auto id = static_cast<int32_t>(i);
    const std::optional<std::string> a = token(target, id), b = token(draft, id);
    if (a != b)
      throw Error("draft model", cat("token ", id, " is '", a.value_or("(none)"), "' for the model but '", b.value_or("(none)"),
                                     "' for the draft: the draft must share the model's token ids"));
    if (a && target.is_special(id) != draft.is_special(id))
      throw Error("draft model", cat("token ", id, " ('", *a, "') is special for ", target.is_special(id) ? "the model" : "the draft",
                                     " only: the draft must share the model's special tokens"));
  }
}

namespace {

// The weight bytes one decode step reads: routed experts at num_experts_per_tok / n_routed_experts
// of theirs; the MTP layer's (with its own head) when `mtp`, the rest otherwise.
double step_bytes(const Engine& engine, bool mtp) {
  const ModelConfig& c = engine.config();
  const double routed = c.router.n_routed_experts > 0 ? static_cast<double>(c.router.num_experts_per_tok) / static_cast<double>(c.router.n_routed_experts) : 1.0;
  double bytes = 0;
  for_each_tensor(engine.weights(), [&](const WeightSite& site, LinearPart, const Tensor& t) {
    if (site.kind == WeightKind::table) return;  // one row per token
    if (site.mtp != mtp) return;
    bytes += static_cast<double>(t.nbytes()) * (site.routed() ? routed : 1.0);
  });
  return bytes;
}

}  // namespace

double draft_step_cost(const Engine& target, const Engine& draft) {
  const double t = step_bytes(target, false);
  return t > 0 ? step_bytes(draft, false) / t : 0.0;
}

double mtp_step_cost(const Engine& target) {
  if (!target.has_mtp()) return 0.0;
  const double t = step_bytes(target, false);
  return t > 0 ? step_bytes(target, true) / t : 0.0;
}

namespace {

double seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

GenerateResult generate(Session& session, const Tokenizer& tokenizer, Sampler& sampler, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const std::function<bool(std::string_view)>& on_text) {
  const int64_t cached = session.position();
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (n == 0) throw Error("generate", "empty prompt");
  if (cached > n) throw Error("generate", cat("the session holds ", cached, " tokens but the prompt has only ", n));
  if (n > session.context())
    throw Error("generate", cat("the prompt is ", n, " tokens but the context holds ", session.context(),
                                " (use a larger --ctx or a shorter prompt)"));
  if (options.spec != SpecKind::none && (options.spec_max < 1 || options.spec_max > kMaxDraft))
    throw Error("generate", cat("spec_max must be in [1, ", kMaxDraft, "], found ", options.spec_max));
  if (options.spec == SpecKind::draft && options.draft == nullptr)
    throw Error("generate", "speculation with a draft model needs the draft model's session (GenerateOptions::draft)");
  if (options.spec == SpecKind::draft && options.draft == &session)
    throw Error("generate", "the draft model's session cannot be the session it drafts for");
  if (n == cached) session.truncate(n - 1);  // the last prompt token must run to give the next logits

  GenerateResult r;
  r.cached_tokens = session.position();
  auto interrupted = [&] { return options.interrupted && options.interrupted(); };
  const auto t0 = std::chrono::steady_clock::now();
  const std::span<const int32_t> fresh = prompt.subspan(static_cast<size_t>(session.position()));
  // Prefill in pieces, so an interrupt does not wait for a long prompt to finish. The logits are a
  // view of the session's own buffer (valid until its next forward): no copy, no allocation.
  constexpr size_t kPiece = 512;
  std::span<const float> logits;
  for (size_t done = 0; done < fresh.size(); done += kPiece) {
    if (interrupted()) {
      r.finish_reason = "interrupted";
      r.prompt_seconds = seconds(t0);
      return r;
    }
    logits = session.forward_view(fresh.subspan(done, std::min(kPiece, fresh.size() - done)));
    r.prompt_tokens += static_cast<int64_t>(std::min(kPiece, fresh.size() - done));
  }
  // Room for every token this call can add, so the decode loop does not reallocate.
  const size_t room = static_cast<size_t>(std::max<int64_t>(0, std::min(options.max_tokens, session.context() - n + 1)));
  const bool speculate = options.spec != SpecKind::none;
  const auto V = static_cast<size_t>(logits.size());
  std::optional<runtime::Drafter> drafter;
  if (speculate) {
    drafter.emplace(options.spec, session, options, sampler, prompt, r.cached_tokens, V, room);
    drafter->prefill(prompt);  // a draft model reads the prompt too: part of the prefill
  }
  r.prompt_seconds = seconds(t0);
  std::vector<int32_t> history;
  history.reserve(prompt.size() + room);
  history.assign(prompt.begin(), prompt.end());
  r.tokens.reserve(room);
  StreamDecoder decoder(tokenizer, options.skip_special_tokens);
  StopMatcher stops(options.stop);
  auto emit = [&](const std::string& text) {
    if (text.empty()) return true;
    r.text += text;
    return on_text(text);
  };
  const auto t1 = std::chrono::steady_clock::now();
  r.finish_reason = "length";
  // Speculation: after a token is sampled, its forward also runs the drafts that follow it; each
  // row of that step is the logits the next token would get had the drafts been decoded one by one
  // (the same bits: kMaxDraft). A row with a pending draft goes through Sampler::verify (greedy: the
  // argmax; sampling: accept or draw from the residual); a token equal to the draft moves on to the
  // next row without a forward. The row after the last accepted draft, and every row without one,
  // goes through sample(). `pending` drafts of `rows`, from `next_draft` on, wait.
  const bool timed = drafter && drafter->timed();
  std::vector<int32_t> step_ids;
  if (speculate) step_ids.reserve(static_cast<size_t>(kMaxDraft + 1));
  std::span<const float> rows;
  size_t next_draft = 0, pending = 0, step_drafts = 0;
  auto settle = [&] {  // a draft step is over: the policy learns how it went
    drafter->record(step_drafts, next_draft);
    step_drafts = 0;
  };
  auto forward = [&](std::span<const int32_t> ids, bool all) {
    if (!timed) return session.forward_view(ids, all);
    const auto ts = std::chrono::steady_clock::now();
    const std::span<const float> out = session.forward_view(ids, all);
    if (all) drafter->verify_step(seconds(ts));
    else drafter->target_step(seconds(ts));
    return out;
  };
  while (r.generated_tokens < options.max_tokens) {
    if (interrupted()) {
      r.finish_reason = "interrupted";
      break;
    }
    // Every token comes from the sampler: greedy is its argmax after the penalties, as transformers
    // applies them.
    const int32_t id = pending > 0 ? sampler.verify(logits, history, drafter->drafts()[next_draft], drafter->q(next_draft))
                                   : sampler.sample(logits, history);
    ++r.generated_tokens;
    r.tokens.push_back(id);
    history.push_back(id);
    const bool hit = pending > 0 && id == drafter->drafts()[next_draft];
    if (hit) {  // this token is already in the cache, its logits are the next row
      ++r.accepted_tokens;
      ++next_draft;
      --pending;
    }
    if (std::find(options.eos_ids.begin(), options.eos_ids.end(), id) != options.eos_ids.end()) {
      r.finish_reason = "eos";
      break;
    }
    bool stopped = false;
    if (!emit(stops.push(decoder.push(id), stopped))) {
      r.finish_reason = "cancelled";
      break;
    }
    if (stopped) {
      r.finish_reason = "stop";
      break;
    }
    if (r.generated_tokens == options.max_tokens) break;
    if (hit) {
      logits = rows.subspan(next_draft * V, V);
      if (pending == 0) settle();
      continue;
    }
    if (pending > 0) {  // a draft the sampler did not pick: it and those after it leave the cache
      session.truncate(session.position() - static_cast<int64_t>(pending));
      pending = 0;
      settle();
    }
    if (session.position() >= session.context()) {
      r.finish_reason = "context";
      break;
    }
    size_t k = 0;
    if (speculate) {
      // Only drafts that could be sampled (max_tokens) and that fit the context.
      const auto fits = static_cast<size_t>(std::min(options.max_tokens - r.generated_tokens - 1, session.context() - session.position() - 1));
      k = drafter->propose(history, fits);
    }
    if (k == 0) {
      logits = forward(std::span<const int32_t>(&id, 1), false);
      continue;
    }
    step_ids.assign(1, id);
    step_ids.insert(step_ids.end(), drafter->drafts().begin(), drafter->drafts().end());
    rows = forward(step_ids, /*all_positions=*/true);
    logits = rows.subspan(0, V);
    next_draft = 0;
    pending = step_drafts = k;
    r.drafted_tokens += static_cast<int64_t>(k);
  }
  // The cache holds what plain decoding leaves: the prompt and every sampled token but the last
  // (drafts verified past the end, and the last token when a draft had fed it, are dropped). The
  // draft model's session keeps what agrees with the tokens.
  if (speculate && r.generated_tokens > 0) {
    const int64_t plain = n + r.generated_tokens - 1;
    if (session.position() > plain) session.truncate(plain);
  }
  if (drafter) {
    drafter->finish(history);
    r.draft_seconds = drafter->draft_seconds();
  }
  if (r.finish_reason != "stop" && r.finish_reason != "cancelled") {  // interrupted: keep what was decoded
    bool stopped = false;
    std::string tail = stops.push(decoder.flush(), stopped);
    if (stopped) r.finish_reason = "stop";
    else tail += stops.flush();
    emit(tail);
  }
  r.gen_seconds = seconds(t1);
  return r;
}

}  // namespace moerun
