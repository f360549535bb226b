#pragma once
// Each subcommand registers itself on the root app and says what to run when it is chosen.

#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

namespace moerun::cli {

struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;  // returns the exit code; throws moerun::Error on failure
};

void add_info_command(CLI::App& root, std::vector<Command>& commands);
void add_logits_command(CLI::App& root, std::vector<Command>& commands);

}  // namespace moerun::cli
