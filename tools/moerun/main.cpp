// moerun: the command. Thin by rule: every subcommand is a library call plus printing.
// stdout carries only the product; errors are one line on stderr. Exit codes: 0 ok, 1 runtime or
// model error, 2 usage error.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <exception>
#include <string>

#include "moerun/error.h"
#include "moerun/commands.h"

namespace moerun::cli {

std::string default_model_dir() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("MOERUN_MODEL"); env && *env) return env;
  std::error_code ec;
  if (fs::exists("models/default/config.json", ec)) return "models/default";
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = exe.parent_path().parent_path() / "models" / "default";
    if (fs::exists(beside / "config.json", ec)) return beside.string();
  }
  throw Error("default model", "models/default not found and $MOERUN_MODEL not set (run scripts/setup.sh, or pass -m DIR)");
}

}  // namespace moerun::cli

namespace {

void print_error(const char* what) {
  std::string line = what;
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  std::fprintf(stderr, "moerun: %s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moerun: local inference for mixture-of-experts language models"};
  app.set_version_flag("--version", std::string("moerun ") + MOERUN_VERSION);
  app.require_subcommand(1);
  std::vector<moerun::cli::Command> commands;
  moerun::cli::add_info_command(app, commands);
  moerun::cli::add_logits_command(app, commands);
  moerun::cli::add_chat_command(app, commands);
  moerun::cli::add_run_command(app, commands);
  moerun::cli::add_bench_command(app, commands);
  moerun::cli::add_tokenize_command(app, commands);
  moerun::cli::add_template_command(app, commands);
  moerun::cli::add_perplexity_command(app, commands);

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }

  try {
    for (const moerun::cli::Command& c : commands)
      if (c.app->parsed()) return c.run();
    return 2;
  } catch (const moerun::Error& e) {
    print_error(e.what());
    return 1;
  } catch (const std::exception& e) {
    print_error(e.what());
    return 1;
  }
}
