// moerun logits -m DIR --ids "1 2 3" [--all] [--json]: the forward pass on given token ids, so
// anyone can check moerun against another implementation of a model.

#include <cstdio>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_io.h"
#include "generation_flags.h"
#include "engine_flags.h"
#include "moerun/commands.h"
#include "moerun/engine.h"
#include "validators.h"

namespace moerun::cli {
namespace {

// "1 2 3" or "1,2,3" -> ids; anything else is a usage error.
std::vector<int32_t> parse_ids(const std::string& text) {
  std::string s = text;
  for (char& ch : s)
    if (ch == ',') ch = ' ';
  std::istringstream in(s);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || v < 0 || v > INT32_MAX)
      throw CLI::ValidationError("--ids", "'" + word + "' is not a token id (a non-negative integer)");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) throw CLI::ValidationError("--ids", "no token ids given");
  return ids;
}

}  // namespace

void add_logits_command(CLI::App& root, std::vector<Command>& commands) {
  struct Options {
    std::string model, ids;
    bool all = false, json = false;
    int64_t context = 0;
    bool context_override = false;
    std::string mla = "absorbed";
    EngineFlags engine{.backend = "cpu"};  // the reference path unless asked
  };
  auto opt = std::make_shared<Options>();
  CLI::App* app = root.add_subcommand("logits", "Print next-token logits for given token ids (CPU reference path unless --backend)");
  app->add_option("-m,--model", opt->model, "model directory")->required();
  app->add_option("--ids", opt->ids, "token ids, separated by spaces or commas")->required();
  app->add_flag("--all", opt->all, "logits of every position, not only the last");
  app->add_flag("--json", opt->json, "print a JSON array of arrays of floats (one array per position)");
  app->add_option("-c,--ctx", opt->context, "context length (default: the model's, at most 4096)")
      ->check(integer_in(0, int64_t{1} << 31));
  app->add_flag("--ctx-override", opt->context_override, "allow a context above the model's max_position_embeddings");
  app->add_option("--mla", opt->mla, "MLA attention form for DeepSeek models")->check(CLI::IsMember({"absorbed", "naive"}));
  opt->engine.add_to(app);
  commands.push_back({app, [opt] {
    std::vector<int32_t> ids;
    try {
      ids = parse_ids(opt->ids);
    } catch (const CLI::ParseError& e) {
      std::fprintf(stderr, "moerun: %s\n", e.what());
      return 2;
    }
    EngineOptions eo;
    eo.context = opt->context;
    eo.context_override = opt->context_override;
    eo.mla = opt->mla == "naive" ? MlaMode::naive : MlaMode::absorbed;
    opt->engine.apply(eo);
    const Engine engine = Engine::load(opt->model, eo);
    report_backend_note(engine);
    follow_if_worker(engine);
    // Without -c the context grows to fit the ids; with -c a longer input is an error.
    const int64_t n = static_cast<int64_t>(ids.size());
    Session session(engine, opt->context > 0 ? opt->context : std::max(engine.default_context(), n));
    const size_t V = static_cast<size_t>(engine.config().vocab_size);
    // With --all the rows stream out a piece of the input at a time: memory stays that of one
    // piece (kRowsPerPiece x V floats) however many ids are given.
    constexpr int64_t kRowsPerPiece = 64;
    const int64_t piece = opt->all ? kRowsPerPiece : n;
    if (opt->json) write_out("[");
    std::string out;
    char buf[32];
    for (int64_t begin = 0; begin < n; begin += piece) {
      const std::span<const int32_t> part(ids.data() + begin, static_cast<size_t>(std::min(piece, n - begin)));
      const std::vector<float> logits = session.forward(part, opt->all);
      const size_t rows = logits.size() / V;
      for (size_t r = 0; r < rows; ++r) {
        const float* row = logits.data() + r * V;
        out.clear();
        if (opt->json) {
          if (begin > 0 || r > 0) out += ",";
          out += nlohmann::json(std::vector<float>(row, row + V)).dump();
        } else {
          for (size_t i = 0; i < V; ++i) {
            std::snprintf(buf, sizeof buf, i ? " %.9g" : "%.9g", static_cast<double>(row[i]));
            out += buf;
          }
          out += "\n";
        }
        write_out(out);
      }
    }
    if (opt->json) write_out("]\n");
    return 0;
  }});
}

}  // namespace moerun::cli
