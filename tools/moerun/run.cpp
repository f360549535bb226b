// moerun run: one prompt, the answer on stdout (streamed, then a newline). For shell scripts:
// stderr carries only the load line and the timing line (nothing with -q); --json prints one object.

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_io.h"
#include "generation_flags.h"
#include "moerun/commands.h"
#include "moerun/error.h"

namespace moerun::cli {

void add_run_command(CLI::App& root, std::vector<Command>& commands) {
  struct Options {
    GenerationFlags gen;
    std::string prompt;
    bool raw = false, json = false, quiet = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* app = root.add_subcommand("run", "Answer one prompt (-p or stdin) and print only the answer");
  opt->gen.add_to(app);
  app->add_option("-p,--prompt", opt->prompt, "the prompt (default: all of stdin, final line ends removed)");
  app->add_flag("--raw", opt->raw, "use the prompt as is, without the chat template");
  app->add_flag("--json", opt->json, "print one JSON object: text, finish_reason, token counts, speeds");
  app->add_flag("-q,--quiet", opt->quiet, "nothing on stderr");
  commands.push_back({app, [opt, app] {
    LoadedModel m = load_model(opt->gen, opt->quiet);
    std::string prompt = opt->prompt;
    if (!app->count("--prompt")) {
      // All of stdin, less the line end(s) `echo` and editors leave at the end. No prompt that fits
      // the context is longer than kMaxBytesPerToken bytes a token: more fails now, not after
      // reading an endless pipe into memory.
      const int64_t ctx = m.engine.default_context();
      prompt = read_stdin(prompt_bytes_cap(ctx), "a " + std::to_string(ctx) + "-token context");
      while (!prompt.empty() && (prompt.back() == '\n' || prompt.back() == '\r')) prompt.pop_back();
    }

    std::vector<int32_t> ids;
    if (opt->raw) {
      ids = m.tokenizer.encode(prompt);  // the user writes the whole prompt, markup and all
    } else {
      Conversation conversation = m.conversation(opt->gen);
      if (!m.chat_template) {
        // The prompt as is: the text continued, no system prompt and no newline after it.
        if (!opt->quiet) std::fprintf(stderr, "# the model has no chat template: using the prompt as is\n");
        conversation.set_system("");
        ConversationOptions co = conversation.options();
        co.chat.add_generation_prompt = false;
        conversation.set_options(co);
      }
      conversation.add_message("user", prompt);
      ids = conversation.prompt_ids();
    }
    Sampler sampler(opt->gen.sampler_params(m.dir));
    Session session(m.engine, std::max<int64_t>(m.engine.default_context(), 0));
    std::optional<Session> draft;  // --spec draft: the draft model's session beside the target's
    if (m.draft) draft.emplace(m.draft->session());
    GenerateOptions go = m.generate_options(opt->gen, sampler.params(), draft ? &*draft : nullptr);
    // SIGINT/SIGTERM stop generating: what was produced is printed and the exit code says why.
    InterruptGuard guard;
    go.interrupted = [] { return InterruptGuard::signal() != 0; };
    const GenerateResult r = generate(session, m.tokenizer, sampler, ids, go, [&](std::string_view piece) {
      if (!opt->json) write_out(piece, /*flush=*/true);  // a failed write throws: generation stops at once
      return true;
    });
    if (opt->json) {
      const nlohmann::ordered_json j = {{"text", r.text},
                                        {"finish_reason", r.finish_reason},
                                        {"prompt_tokens", r.prompt_tokens},
                                        {"generated_tokens", r.generated_tokens},
                                        {"drafted_tokens", r.drafted_tokens},
                                        {"accepted_tokens", r.accepted_tokens},
                                        {"prompt_tps", r.prompt_tps()},
                                        {"gen_tps", r.gen_tps()}};
      write_out(j.dump() + "\n", true);
    } else {
      write_out("\n", true);
    }
    if (!opt->quiet)
      std::fprintf(stderr, "# prompt %lld tokens at %.1f t/s; generated %lld tokens at %.1f t/s; finish: %s\n",
                   static_cast<long long>(r.prompt_tokens), r.prompt_tps(), static_cast<long long>(r.generated_tokens),
                   r.gen_tps(), r.finish_reason.c_str());
    return InterruptGuard::exit_code();  // 0, or 130 (SIGINT) / 143 (SIGTERM)
  }});
}

}  // namespace moerun::cli
