// moerun perplexity: how well a model predicts a text, llama-perplexity style (moerun::perplexity
// in include/moerun/score.h: chunks of -c tokens, each from an empty cache, its second half
// scored). Prints the perplexity exp(mean negative log-likelihood) and the tokens scored; --quant
// and --backend compare how much a quantization or another backend costs on the same text.

#include <algorithm>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_io.h"
#include "generation_flags.h"
#include "engine_flags.h"
#include "moerun/commands.h"
#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/score.h"
#include "moerun/tokenizer.h"
#include "validators.h"

namespace moerun::cli {

void add_perplexity_command(CLI::App& root, std::vector<Command>& commands) {
  struct Options {
    std::string model, file;
    int64_t context = 512;
    bool context_override = false;
    int64_t max_chunks = 0;
    int threads = 0;
    bool json = false;
    EngineFlags engine;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* app = root.add_subcommand("perplexity", "Perplexity of a model on a text file (llama-perplexity style)");
  app->add_option("-m,--model", opt->model, "model directory (default: $MOERUN_MODEL or models/default)");
  app->add_option("-f,--file", opt->file, "UTF-8 text to score")->required();
  app->add_option("-c,--ctx", opt->context, "tokens per chunk (each from an empty cache; its second half is scored)")
      ->check(integer_in(8, int64_t{1} << 20));
  app->add_flag("--ctx-override", opt->context_override, "allow -c above the model's max_position_embeddings");
  app->add_option("--chunks", opt->max_chunks, "score at most this many chunks (0: all)")->check(integer_in(0, int64_t{1} << 30));
  app->add_option("-t,--threads", opt->threads, "CPU threads (default: one per hardware thread)")->check(thread_count());
  app->add_flag("--json", opt->json, "print one JSON object");
  opt->engine.add_to(app);
  commands.push_back({app, [opt] {
    const std::string dir = opt->model.empty() ? default_model_dir() : opt->model;
    // The text is read whole (FIFOs included) up to a cap: with --chunks only what those chunks can
    // use, else kMaxTextBytes (a larger corpus takes --chunks).
    const size_t cap = opt->max_chunks > 0 ? std::min(kMaxTextBytes, static_cast<size_t>(opt->max_chunks) *
                                                                         static_cast<size_t>(opt->context) * kMaxBytesPerToken)
                                           : kMaxTextBytes;
    const std::string text = read_file(opt->file, cap, opt->max_chunks > 0 ? "more than --chunks can score" : "use --chunks for a larger text");
    EngineOptions eo;
    eo.threads = opt->threads;
    eo.context = opt->context;
    eo.context_override = opt->context_override;
    opt->engine.apply(eo);
    const Engine engine = Engine::load(dir, eo);
    report_backend_note(engine);
    follow_if_worker(engine);
    const Tokenizer tok = Tokenizer::load(dir);
    const std::vector<int32_t> ids = tok.encode(text, {.add_special_tokens = false});
    const int64_t n_ctx = opt->context;
    if (static_cast<int64_t>(ids.size()) < n_ctx)
      throw Error(opt->file, "the text is " + std::to_string(ids.size()) + " tokens, shorter than one chunk of " + std::to_string(n_ctx) +
                                 " (use a smaller -c)");
    PerplexityOptions po;
    po.context = n_ctx;
    po.max_chunks = opt->max_chunks;
    if (!opt->json)
      po.on_chunk = [](int64_t chunk, int64_t chunks, const ScoreResult& so_far) {
        char line[128];
        std::snprintf(line, sizeof line, "\r# chunk %lld/%lld: perplexity so far %.4f", static_cast<long long>(chunk),
                      static_cast<long long>(chunks), so_far.perplexity());
        open_progress(line);
      };
    const PerplexityResult r = perplexity(engine, ids, po);
    const double ppl = r.perplexity();
    const int64_t scored = r.score.tokens, chunks = r.chunks;
    if (opt->json) {
      nlohmann::ordered_json j{{"perplexity", ppl}, {"tokens_scored", scored}, {"chunks", chunks}, {"ctx", n_ctx},
                               {"quant", opt->engine.quant}, {"backend", engine.backend() == BackendKind::cuda ? "cuda" : "cpu"}};
      write_out(j.dump() + "\n");
    } else {
      end_progress_line();
      char line[160];
      std::snprintf(line, sizeof line, "perplexity %.4f over %lld tokens (%lld chunks of %lld)\n", ppl, static_cast<long long>(scored),
                    static_cast<long long>(chunks), static_cast<long long>(n_ctx));
      write_out(line);
    }
    return 0;
  }});
}

}  // namespace moerun::cli
