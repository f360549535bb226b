// scripts/gpu-check.sh --dry-run, on a machine without a GPU or a GPU build: the stages come in their
// intended order (cheap and telling first), each with a budget, the budgets fit the 9 minutes a
// 10-minute device command leaves, the sanitizer stages name small tests only, and nothing runs.

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace moerun {
namespace {

namespace fs = std::filesystem;

struct ScriptRun {
  int code = -1;
  std::string out;
};

// `bash scripts/gpu-check.sh ARGS` from the source tree, stdout captured (stderr joins it), with the
// step scale unset so the budgets are the documented ones.
ScriptRun dry_run(const std::string& args) {
  const std::string cmd = "env -u MOERUN_STEP_SCALE -u OUT bash '" + (fs::path(MOERUN_SOURCE_DIR) / "scripts" / "gpu-check.sh").string() +
                          "' " + args + " 2>&1 </dev/null";
  ScriptRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

struct Stage {
  int num = -1;
  std::string name;
  int budget = -1;  // -1: skipped
  std::vector<std::string> commands;
};

std::vector<Stage> stages(const std::string& out, int* total) {
  std::vector<Stage> s;
  const std::regex head(R"(^stage (\d+) ([a-z]+): (budget (\d+)s|skipped.*)$)"), total_line(R"(^total budget: (\d+)s)");
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, head)) {
      s.push_back({std::stoi(m[1]), m[2], m[4].matched ? std::stoi(m[4]) : -1, {}});
    } else if (line.rfind("    $ ", 0) == 0 && !s.empty()) {
      s.back().commands.push_back(line.substr(6));
    } else if (std::regex_search(line, m, total_line)) {
      *total = std::stoi(m[1]);
    }
  }
  return s;
}

// The --gtest_filter= value of a command line ("" when it has none).
std::string filter_of(const std::string& command) {
  const size_t at = command.find("--gtest_filter=");
  if (at == std::string::npos) return "";
  const size_t from = at + 15;
  return command.substr(from, command.find(' ', from) - from);
}

TEST(GpuCheckCli, DryRunListsTheStagesInOrderWithinNineMinutes) {
  const fs::path out = fs::temp_directory_path() / ("gpu_check_dry_run_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const ScriptRun r = dry_run("--dry-run --out '" + out.string() + "'");
  ASSERT_EQ(r.code, 0) << r.out;
  int total = -1;
  const std::vector<Stage> s = stages(r.out, &total);
  const std::vector<std::string> order = {"device", "ops", "golden", "kernels", "bench", "memcheck", "racecheck"};
  ASSERT_EQ(s.size(), order.size()) << r.out;
  int sum = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(s[i].num, static_cast<int>(i)) << r.out;
    EXPECT_EQ(s[i].name, order[i]) << r.out;
    EXPECT_GT(s[i].budget, 0) << s[i].name << " has no budget:\n" << r.out;
    EXPECT_FALSE(s[i].commands.empty()) << s[i].name << " lists no command:\n" << r.out;
    sum += s[i].budget;
  }
  EXPECT_EQ(total, sum) << r.out;
  EXPECT_GT(total, 0);
  EXPECT_LE(total, 540) << "the stages must fit the 10-minute device command with a minute to spare";
  EXPECT_FALSE(fs::exists(out)) << "a dry run wrote its output directory";

  // The op stage leaves out the end-to-end suites and the measurements; the golden stage runs them.
  const std::string ops = filter_of(s[1].commands.at(0));
  ASSERT_EQ(ops.rfind("-", 0), 0u) << ops;
  for (const char* left_out : {"CudaGolden", "CudaKv", "CudaEngine", "Ceilings"}) EXPECT_NE(ops.find(left_out), std::string::npos) << ops;
  const std::string golden = filter_of(s[2].commands.at(0));
  for (const char* in : {"CudaGolden", "CudaKv", "CudaEngine"}) EXPECT_NE(golden.find(in), std::string::npos) << golden;
  // The bench stage keeps its three models.
  const std::string bench = s[4].commands.size() == 3 ? s[4].commands[1] + s[4].commands[2] : "";
  EXPECT_NE(bench.find("qwen3_30b_a3b.json"), std::string::npos) << r.out;
  EXPECT_NE(bench.find("deepseek_v3.json"), std::string::npos) << r.out;

  // The sanitizers run named tests (no wildcard, no negative filter), none of them large.
  for (const size_t i : {size_t{5}, size_t{6}}) {
    ASSERT_EQ(s[i].commands.size(), 1u) << r.out;
    const std::string& cmd = s[i].commands[0];
    EXPECT_NE(cmd.find("compute-sanitizer"), std::string::npos) << cmd;
    EXPECT_NE(cmd.find(i == 5 ? "--tool memcheck" : "--tool racecheck"), std::string::npos) << cmd;
    const std::string f = filter_of(cmd);
    ASSERT_FALSE(f.empty()) << cmd;
    EXPECT_EQ(f.find('*'), std::string::npos) << "a sanitizer subset must name its tests: " << f;
    EXPECT_EQ(f.find('-'), std::string::npos) << f;
    for (const char* large : {"Ceilings", "Large", "Golden", "CudaKv", "CudaEngine", "CudaBatch", "DeepSeekV3", "MaxLen"})
      EXPECT_EQ(f.find(large), std::string::npos) << s[i].name << " includes " << large << ": " << f;
    std::istringstream names(f);
    int count = 0;
    for (std::string name; std::getline(names, name, ':'); ++count)
      EXPECT_TRUE(std::regex_match(name, std::regex(R"([A-Za-z0-9]+\.[A-Za-z0-9]+)"))) << name;
    EXPECT_GE(count, 3) << f;
  }
}

TEST(GpuCheckCli, QuickAndNoSanitizerSkipStagesInTheDryRun) {
  const ScriptRun r = dry_run("--dry-run --quick --no-sanitizer");
  ASSERT_EQ(r.code, 0) << r.out;
  int total = -1;
  const std::vector<Stage> s = stages(r.out, &total);
  ASSERT_EQ(s.size(), 7u) << r.out;
  EXPECT_EQ(s[2].budget, -1) << "--quick runs no golden stage:\n" << r.out;
  EXPECT_EQ(s[4].commands.size(), 1u) << "--quick benches one model:\n" << r.out;
  EXPECT_EQ(s[5].budget, -1) << r.out;
  EXPECT_EQ(s[6].budget, -1) << r.out;
  EXPECT_EQ(total, s[0].budget + s[1].budget + s[3].budget + s[4].budget) << r.out;
}

TEST(GpuCheckCli, RefusesUnknownArguments) {
  const ScriptRun r = dry_run("--dry-run --no-such-flag");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--no-such-flag"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace moerun
