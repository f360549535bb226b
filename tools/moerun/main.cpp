// moerun: the command. Thin by rule: every subcommand is a library call plus printing.
// stdout carries only the product; errors are one line on stderr. Exit codes: 0 ok, 1 runtime or
// model error, 2 usage error.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <new>
#include <string>
#include <system_error>

#include "cli_io.h"
#include "generation_flags.h"
#include "moerun/commands.h"
#include "moerun/engine.h"
#include "moerun/error.h"

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

// One line on stderr, on a line of its own (never glued to an open "# loading ..." line).
void print_error(const std::string& what) {
  moerun::cli::end_progress_line();
  // Under mpirun every rank's stderr reaches the terminal: say which rank failed.
  std::string line = moerun::launch_size() > 1 ? "rank " + std::to_string(moerun::launch_rank()) + ": " + what : what;
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  std::fprintf(stderr, "moerun: %s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  moerun::cli::guard_standard_fds();
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
  moerun::cli::add_serve_command(app, commands);

  // `moerun foo`: name the unknown command (CLI11 would only say that a subcommand is required).
  bool known = argc < 2 || argv[1][0] == '-';
  std::string names;
  for (const moerun::cli::Command& c : commands) {
    names += (names.empty() ? "" : ", ") + c.app->get_name();
    known = known || c.app->check_name(argv[1]);
  }
  if (!known) {
    print_error(std::string("unknown command '") + argv[1] + "' (commands: " + names + "; --help for more)");
    return 2;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    const int code = app.exit(e);
    try {
      moerun::cli::finish_out();
    } catch (const moerun::Error& err) {
      print_error(err.what());
      return 1;
    }
    return code;
  } catch (const CLI::ParseError& e) {
    print_error(e.what());  // one line: "moerun: --n-predict: must be a whole number ..."
    return 2;
  }

  int code = 2;
  try {
    for (const moerun::cli::Command& c : commands)
      if (c.app->parsed()) {
        code = c.run();
        break;
      }
    // Output that only fails when flushed (a full disk, a closed stdout) is a failure too.
    moerun::cli::finish_out();
    return code;
  } catch (const moerun::cli::WorkerDone&) {  // a worker rank followed the leader to the end
    return 0;
  } catch (const moerun::Error& e) {
    print_error(e.what());
  } catch (const std::bad_alloc&) {
    print_error("out of memory (a smaller -c, fewer threads or a smaller input may fit)");
  } catch (const std::system_error& e) {
    print_error(std::string("system error: ") + e.what());
  } catch (const std::exception& e) {
    print_error(std::string("internal error: ") + e.what());
  }
  // An error on one rank of a distributed run stops them all, so none waits for this one (no-op
  // without MPI).
  moerun::abort_ranks(1);
  return 1;
}
