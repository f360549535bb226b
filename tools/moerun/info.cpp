// moerun info PATH [--json] [--tensors]: what is in a model directory or a .safetensors file.
// moerun info PATH --plan [-c CTX] [--quant Q] [--fp8 F] [--kv-type T] [--backend B] [--layers N] [--json]:
// the memory plan of running it here (PATH may be a bare config.json, or a directory without weights:
// no checkpoint needed).

#include <cstdio>
#include <filesystem>
#include <string>

#include "cli_io.h"
#include "engine_flags.h"
#include "moerun/commands.h"
#include "moerun/error.h"
#include "moerun/model.h"
#include "moerun/plan.h"
#include "validators.h"

namespace moerun::cli {

namespace {

// A directory with weights plans from its tensors; a config.json (or a directory with none) from
// the shapes its config implies, in its torch_dtype.
MemoryPlan plan_path(const std::filesystem::path& path, const EngineOptions& options, const ConfigOverrides& o) {
  const bool overridden = o.num_hidden_layers.has_value();
  if (std::filesystem::is_directory(path)) {
    const ModelFiles files = discover_model_files(path);
    if (!files.shards.empty()) {
      if (overridden) throw moerun::Error("--layers", "only plans from a config.json (not from a checkpoint's weights)");
      return plan_memory(Model::load(path), options);
    }
    if (files.config.empty()) throw moerun::Error(path.string(), "config.json not found (not a Hugging Face model directory?)");
    return plan_memory(load_model_config(files.config, o), options);
  }
  return plan_memory(load_model_config(path, o), options);
}

}  // namespace

void add_info_command(CLI::App& root, std::vector<Command>& commands) {
  struct Options {
    std::string path;
    bool json = false;
    bool tensors = false;
    bool plan = false;
    int64_t context = 0;
    bool context_override = false;
    int layers = 0;
    int ranks = 0;
    EngineFlags engine;
  };
  auto opt = std::make_shared<Options>();
  CLI::App* app = root.add_subcommand("info", "Describe a Hugging Face model directory or a .safetensors file");
  app->add_option("path", opt->path, "model directory, .safetensors file, or (with --plan) a config.json")->required();
  app->add_flag("--json", opt->json, "print one JSON object instead of text");
  app->add_flag("--tensors", opt->tensors, "list every tensor: name, dtype, shape, shard");
  app->add_flag("--plan", opt->plan,
                "the memory plan: weights, KV cache and workspace by part and device against what this machine has free");
  app->add_option("-c,--ctx", opt->context, "with --plan: context length (default: the model's, at most 4096)")
      ->check(integer_in(1, int64_t{1} << 31));
  app->add_flag("--ctx-override", opt->context_override, "with --plan: a context above the model's max_position_embeddings");
  app->add_option("--layers", opt->layers, "with --plan on a config.json: cap num_hidden_layers (as bench --synthetic --layers)")
      ->check(integer_in(1, 4096));
  app->add_option("--ranks", opt->ranks,
                  "with --plan: the plan of each of N ranks of a distributed run (mpirun -np N) under --split; "
                  "JSON: {\"ranks\": [plan, ...]}")
      ->check(integer_in(1, 4096));
  opt->engine.add_to(app);
  commands.push_back({app, [opt] {
                        // Under mpirun every rank plans; rank 0 prints them all (the others print nothing).
                        if (opt->plan && opt->ranks == 0 && launch_size() > 1) {
                          if (launch_rank() != 0) return 0;
                          opt->ranks = launch_size();
                        }
                        if (opt->plan && opt->ranks > 1) {
                          EngineOptions eo;
                          opt->engine.apply(eo);
                          eo.context = opt->context;
                          eo.context_override = opt->context_override;
                          eo.ranks = opt->ranks;
                          ConfigOverrides o;
                          if (opt->layers > 0) o.num_hidden_layers = opt->layers;
                          std::string out = opt->json ? "{\"ranks\": [\n" : "";
                          for (int r = 0; r < opt->ranks; ++r) {
                            eo.rank = r;
                            const MemoryPlan p = plan_path(opt->path, eo, o);
                            out += opt->json ? (r ? "," : "") + plan_json(p) : (r ? "\n" : "") + plan_text(p);
                          }
                          if (opt->json) out += "]}\n";
                          write_out(out);
                          return 0;
                        }
                        if (opt->plan) {
                          EngineOptions eo;
                          opt->engine.apply(eo);
                          eo.context = opt->context;
                          eo.context_override = opt->context_override;
                          ConfigOverrides o;
                          if (opt->layers > 0) o.num_hidden_layers = opt->layers;
                          const MemoryPlan p = plan_path(opt->path, eo, o);
                          write_out(opt->json ? plan_json(p) : plan_text(p));
                          return 0;
                        }
                        const ModelSummary s = summarize_path(opt->path);
                        const std::string out = opt->json ? summary_json(s, opt->tensors) : summary_text(s, opt->tensors);
                        write_out(out);
                        return 0;
                      }});
}

}  // namespace moerun::cli
