#pragma once
// Each subcommand registers itself on the root app and says what to run when it is chosen.

#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace moerun::cli {

struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;  // returns the exit code; throws moerun::Error on failure
};

// $MOERUN_MODEL, else models/default in the working directory, else next to the executable's
// build directory (build/../models/default).
std::string default_model_dir();

void add_info_command(CLI::App& root, std::vector<Command>& commands);
void add_bench_command(CLI::App& root, std::vector<Command>& commands);
void add_run_command(CLI::App& root, std::vector<Command>& commands);
void add_chat_command(CLI::App& root, std::vector<Command>& commands);
void add_tokenize_command(CLI::App& root, std::vector<Command>& commands);
void add_template_command(CLI::App& root, std::vector<Command>& commands);
void add_logits_command(CLI::App& root, std::vector<Command>& commands);
void add_perplexity_command(CLI::App& root, std::vector<Command>& commands);
void add_serve_command(CLI::App& root, std::vector<Command>& commands);

}  // namespace moerun::cli
