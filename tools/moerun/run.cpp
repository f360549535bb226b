// moerun run: one prompt, the answer on stdout (streamed, then a newline). For shell scripts:
// stderr carries only the load line and the timing line (nothing with -q); --json prints one object.

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

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
    std::string prompt = opt->prompt;
    if (!app->count("--prompt")) {
      // All of stdin, less the line end(s) `echo` and editors leave at the end.
      prompt.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
      while (!prompt.empty() && (prompt.back() == '\n' || prompt.back() == '\r')) prompt.pop_back();
    }
    LoadedModel m = load_model(opt->gen, opt->quiet);

    std::vector<int32_t> ids;
    if (opt->raw || !m.chat_template) {
      if (!opt->raw && !opt->quiet) std::fprintf(stderr, "# the model has no chat template: using the prompt as is\n");
      ids = m.tokenizer.encode(prompt);
    } else {
      ChatJson messages = ChatJson::array();
      if (!opt->gen.system.empty()) messages.push_back({{"role", "system"}, {"content", opt->gen.system}});
      messages.push_back({{"role", "user"}, {"content", prompt}});
      // The template writes BOS itself where the model wants one: no special tokens added here.
      ids = m.tokenizer.encode(m.chat_template->apply(messages), {.add_special_tokens = false, .parse_special = true});
    }
    Sampler sampler(opt->gen.sampler_params(m.dir));
    Session session(m.engine, std::max<int64_t>(m.engine.default_context(), 0));
    GenerateOptions go;
    go.max_tokens = opt->gen.max_tokens;
    go.stop = opt->gen.stop;
    go.eos_ids = m.eos_ids;
    const GenerateResult r = generate(session, m.tokenizer, sampler, ids, go, [&](std::string_view piece) {
      if (!opt->json) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      }
      return true;
    });
    if (opt->json) {
      const nlohmann::ordered_json j = {{"text", r.text},
                                        {"finish_reason", r.finish_reason},
                                        {"prompt_tokens", r.prompt_tokens},
                                        {"generated_tokens", r.generated_tokens},
                                        {"prompt_tps", r.prompt_tps()},
                                        {"gen_tps", r.gen_tps()}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("\n");
    }
    if (!opt->quiet)
      std::fprintf(stderr, "# prompt %lld tokens at %.1f t/s; generated %lld tokens at %.1f t/s; finish: %s\n",
                   static_cast<long long>(r.prompt_tokens), r.prompt_tps(), static_cast<long long>(r.generated_tokens),
                   r.gen_tps(), r.finish_reason.c_str());
    return 0;
  }});
}

}  // namespace moerun::cli
