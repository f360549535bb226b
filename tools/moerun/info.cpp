// moerun info PATH [--json] [--tensors]: what is in a model directory or a .safetensors file.

#include <cstdio>
#include <string>

#include "cli_io.h"
#include "moerun/commands.h"
#include "moerun/model.h"

namespace moerun::cli {

void add_info_command(CLI::App& root, std::vector<Command>& commands) {
  struct Options {
    std::string path;
    bool json = false;
    bool tensors = false;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* app = root.add_subcommand("info", "Describe a Hugging Face model directory or a .safetensors file");
  app->add_option("path", opt->path, "model directory or .safetensors file")->required();
  app->add_flag("--json", opt->json, "print one JSON object instead of text");
  app->add_flag("--tensors", opt->tensors, "list every tensor: name, dtype, shape, shard");
  commands.push_back({app, [opt] {
                        const ModelSummary s = summarize_path(opt->path);
                        const std::string out = opt->json ? summary_json(s, opt->tensors) : summary_text(s, opt->tensors);
                        write_out(out);
                        return 0;
                      }});
}

}  // namespace moerun::cli
