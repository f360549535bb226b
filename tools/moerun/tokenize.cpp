// moerun tokenize: text to ids (or ids to text with --decode) with a model's tokenizer.

#include <cstdio>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "cli_io.h"
#include "moerun/commands.h"
#include "moerun/error.h"
#include "moerun/tokenizer.h"

namespace moerun::cli {
namespace {

std::string ids_line(const std::vector<int32_t>& ids, bool json) {
  if (json) return nlohmann::json(ids).dump() + "\n";
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? " " : "") + std::to_string(ids[i]);
  return out + "\n";
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::string s = text;
  for (char& ch : s)
    if (ch == ',' || ch == '[' || ch == ']') ch = ' ';
  std::istringstream in(s);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
    }
    if (used != word.size() || v < 0 || v > INT32_MAX) throw Error("--decode", "'" + word + "' is not a token id");
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

// Every id must name a token: decoding would otherwise skip it without a word.
void check_ids(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id >= tok.vocab_size())
      throw Error("--decode", "id " + std::to_string(id) + " (number " + std::to_string(i + 1) + ") is outside the vocabulary [0, " +
                                  std::to_string(tok.vocab_size()) + ")");
    try {
      (void)tok.id_to_token(id);
    } catch (const Error&) {
      throw Error("--decode", "id " + std::to_string(id) + " (number " + std::to_string(i + 1) + ") has no token in " + tok.source());
    }
  }
}

}  // namespace

void add_tokenize_command(CLI::App& root, std::vector<Command>& commands) {
  struct Options {
    std::string model, prompt;
    bool json = false, no_special = false, no_bos = false, decode = false, jsonl = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* app = root.add_subcommand("tokenize", "Encode text to token ids (or decode ids with --decode)");
  app->add_option("-m,--model", opt->model, "model directory, tokenizer.json or tokenizer.model")->required();
  app->add_option("-p,--prompt", opt->prompt, "the text (default: all of stdin)");
  app->add_flag("--json", opt->json, "print a JSON array");
  app->add_flag("--no-special", opt->no_special, "encode special-token text (\"<|im_start|>\") as plain text");
  app->add_flag("--no-bos", opt->no_bos, "add no BOS/EOS (no post-processor template)");
  app->add_flag("--decode", opt->decode, "read token ids and print their text");
  app->add_flag("--jsonl", opt->jsonl, "each stdin line is a JSON string: print one JSON array of ids per line");
  commands.push_back({app, [opt, app] {
    const Tokenizer tok = Tokenizer::load(opt->model);
    const EncodeOptions eo{.add_special_tokens = !opt->no_bos, .parse_special = !opt->no_special};
    std::string out;
    if (opt->jsonl) {
      std::string line;
      for (size_t n = 1; read_stdin_line(line, kMaxTextBytes); ++n) {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {
          throw Error("stdin line " + std::to_string(n), std::string("not JSON: ") + e.what());
        }
        if (!j.is_string()) throw Error("stdin line " + std::to_string(n), "expected a JSON string");
        write_out(ids_line(tok.encode(j.get<std::string>(), eo), true));
      }
      return 0;
    }
    const std::string text = app->count("--prompt") ? opt->prompt : read_stdin(kMaxTextBytes, "what tokenize reads");
    if (opt->decode) {
      const std::vector<int32_t> ids = parse_ids(text);
      check_ids(tok, ids);
      out = tok.decode(ids);
      if (opt->json) out = nlohmann::json(out).dump();
      out += "\n";
    } else {
      out = ids_line(tok.encode(text, eo), opt->json);
    }
    write_out(out);
    return 0;
  }});
}

}  // namespace moerun::cli
