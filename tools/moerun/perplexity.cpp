// moerun perplexity: how well a model predicts a text, llama-perplexity style. The text is split
// into chunks of -c tokens; each chunk runs from an empty cache and every token after the chunk's
// first half is scored (so each scored token sees at least half a chunk of context). Prints the
// perplexity exp(mean negative log-likelihood) and the tokens scored; --quant and --backend
// compare how much a quantization or another backend costs on the same text.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "engine_flags.h"
#include "moerun/commands.h"
#include "moerun/engine.h"
#include "moerun/error.h"
#include "moerun/tokenizer.h"

namespace moerun::cli {

void add_perplexity_command(CLI::App& root, std::vector<Command>& commands) {
  struct Options {
    std::string model, file;
    int64_t context = 512;
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
      ->check(CLI::Range(int64_t{8}, int64_t{1} << 20));
  app->add_option("--chunks", opt->max_chunks, "score at most this many chunks (0: all)")->check(CLI::NonNegativeNumber);
  app->add_option("-t,--threads", opt->threads, "CPU threads (default: one per hardware thread)")->check(CLI::Range(1, 1024));
  app->add_flag("--json", opt->json, "print one JSON object");
  opt->engine.add_to(app);
  commands.push_back({app, [opt] {
    std::ifstream in(opt->file, std::ios::binary);
    if (!in) throw Error(opt->file, "cannot open the text file");
    std::stringstream text;
    text << in.rdbuf();
    const std::string dir = opt->model.empty() ? default_model_dir() : opt->model;
    EngineOptions eo;
    eo.threads = opt->threads;
    eo.context = opt->context;
    opt->engine.apply(eo);
    const Engine engine = Engine::load(dir, eo);
    const Tokenizer tok = Tokenizer::load(dir);
    const std::vector<int32_t> ids = tok.encode(text.str(), {.add_special_tokens = false});
    const int64_t n_ctx = opt->context, V = engine.config().vocab_size;
    int64_t chunks = static_cast<int64_t>(ids.size()) / n_ctx;
    if (opt->max_chunks > 0) chunks = std::min(chunks, opt->max_chunks);
    if (chunks == 0)
      throw Error(opt->file, "the text is " + std::to_string(ids.size()) + " tokens, shorter than one chunk of " + std::to_string(n_ctx) +
                                 " (use a smaller -c)");
    double nll = 0;
    int64_t scored = 0;
    Session s(engine, n_ctx);
    for (int64_t k = 0; k < chunks; ++k) {
      s.reset();
      const std::span<const int32_t> chunk(ids.data() + k * n_ctx, static_cast<size_t>(n_ctx));
      const std::vector<float> logits = s.forward(chunk, /*all_positions=*/true);
      for (int64_t t = n_ctx / 2; t + 1 < n_ctx; ++t) {  // logits at t predict token t + 1
        const float* row = logits.data() + t * V;
        const float mx = *std::max_element(row, row + V);
        double sum = 0;
        for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v] - mx));
        nll += std::log(sum) + mx - row[chunk[static_cast<size_t>(t + 1)]];
        ++scored;
      }
      if (!opt->json)
        std::fprintf(stderr, "\r# chunk %lld/%lld: perplexity so far %.4f", static_cast<long long>(k + 1),
                     static_cast<long long>(chunks), std::exp(nll / static_cast<double>(scored)));
    }
    const double ppl = std::exp(nll / static_cast<double>(scored));
    if (opt->json) {
      nlohmann::ordered_json j{{"perplexity", ppl}, {"tokens_scored", scored}, {"chunks", chunks}, {"ctx", n_ctx},
                               {"quant", opt->engine.quant}, {"backend", engine.backend() == BackendKind::cuda ? "cuda" : "cpu"}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::fprintf(stderr, "\n");
      std::printf("perplexity %.4f over %lld tokens (%lld chunks of %lld)\n", ppl, static_cast<long long>(scored),
                  static_cast<long long>(chunks), static_cast<long long>(n_ctx));
    }
    return 0;
  }});
}

}  // namespace moerun::cli
