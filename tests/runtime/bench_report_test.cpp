// bench's report (format_bench): markdown, JSON and CSV from one column list. JSON keeps the keys
// scripts/gpu-check.sh reads; CSV carries every JSON key, in the same order; the markdown table is
// the one `moerun bench` has always printed.

#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "moerun/bench.h"
#include "support/golden.h"

namespace moerun {
namespace {

std::vector<BenchRow> sample_rows(double gemm_ceiling) {
  BenchRow pp{.model = "llama 1.23 M f32", .size = "4.50 MiB", .params = "1.23 M", .backend = "CPU", .threads = 2,
              .result = {.test = "pp8", .tokens = 8, .tps = {100.0, 110.0}, .mean = 105.0, .sd = 7.0710678, .bytes_per_token = 0, .gbps = 0},
              .ceiling_gbps = 10.0, .gemm_ceiling_tflops = gemm_ceiling, .tflops = 0.26};
  BenchRow tg = pp;
  tg.result = {.test = "tg4 @ d16", .tokens = 4, .tps = {10.0, 12.0}, .mean = 11.0, .sd = 1.4142136, .bytes_per_token = 1234567,
               .gbps = 0.0135802};
  tg.tflops = 0;
  return {pp, tg};
}

std::vector<std::string> split(const std::string& line) {  // CSV fields; quoted fields hold no quotes
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (char ch : line) {
    if (ch == '"') quoted = !quoted;
    if (ch == ',' && !quoted) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  out.push_back(cur);
  return out;
}

TEST(BenchReport, MarkdownTable) {
  EXPECT_EQ(format_bench(sample_rows(0), BenchFormat::markdown),
            "| model | size | params | backend | threads | kv | test | t/s | B/token | GB/s | % bw |\n"
            "| --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |\n"
            "| llama 1.23 M f32 | 4.50 MiB | 1.23 M | CPU | 2 | f32 | pp8 | 105.00 ± 7.07 | - | - | - |\n"
            "| llama 1.23 M f32 | 4.50 MiB | 1.23 M | CPU | 2 | f32 | tg4 @ d16 | 11.00 ± 1.41 | 1.23 MB | 0.01 | 0.1 |\n");
  // With a GEMM ceiling (CUDA) the pp rows say how close to it prefill came.
  EXPECT_EQ(format_bench(sample_rows(2.0), BenchFormat::markdown),
            "| model | size | params | backend | threads | kv | test | t/s | B/token | GB/s | % bw | TFLOP/s | % gemm |\n"
            "| --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
            "| llama 1.23 M f32 | 4.50 MiB | 1.23 M | CPU | 2 | f32 | pp8 | 105.00 ± 7.07 | - | - | - | 0.3 | 13.0 |\n"
            "| llama 1.23 M f32 | 4.50 MiB | 1.23 M | CPU | 2 | f32 | tg4 @ d16 | 11.00 ± 1.41 | 1.23 MB | 0.01 | 0.1 | - | - |\n");
}

TEST(BenchReport, JsonKeysAndCsvColumnsAreOneList) {
  const std::vector<BenchRow> rows = sample_rows(2.0);
  const auto j = nlohmann::ordered_json::parse(format_bench(rows, BenchFormat::json));
  ASSERT_EQ(j.size(), 2u);
  std::vector<std::string> keys;
  for (const auto& [key, value] : j[0].items()) keys.push_back(key);
  const std::vector<std::string> want = {"model", "size", "params", "backend", "threads", "kv_type", "test", "batch", "tokens",
                                         "tps_mean", "tps_sd", "seq_tps", "tps", "bytes_per_token", "bytes_per_step",
                                         "experts_per_layer", "gbps", "ceiling_gbps", "bw_fraction", "tflops", "gemm_ceiling_tflops",
                                         "gemm_fraction", "ranks", "comm_bytes_per_token", "comm_fraction", "spec",
                                         "drafted_tokens", "accepted_tokens", "acceptance_rate", "accepted_per_step",
                                         "draft_ms_per_token", "ops_per_token", "launches_per_token"};
  EXPECT_EQ(keys, want);
  EXPECT_EQ(j[1]["test"], "tg4 @ d16");
  EXPECT_EQ(j[1]["threads"], 2);
  EXPECT_DOUBLE_EQ(j[1]["tps_mean"].get<double>(), 11.0);
  EXPECT_EQ(j[1]["tps"], nlohmann::json::parse("[10.0, 12.0]"));
  EXPECT_DOUBLE_EQ(j[1]["bw_fraction"].get<double>(), 0.0135802 / 10.0);
  EXPECT_DOUBLE_EQ(j[0]["gemm_fraction"].get<double>(), 0.13);
  EXPECT_DOUBLE_EQ(j[0]["gemm_ceiling_tflops"].get<double>(), 2.0);

  std::istringstream csv(format_bench(rows, BenchFormat::csv));
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(split(line), want);  // the header: every JSON key, in order
  std::getline(csv, line);
  EXPECT_EQ(line, "\"llama 1.23 M f32\",\"4.50 MiB\",\"1.23 M\",CPU,2,f32,\"pp8\",1,8,105.0000,7.0711,105.0000,\"100.0000 110.0000\",0,0,"
                  "0.0000,0.0000,10.0000,0.0000,0.2600,2.0000,0.1300,1,0,0.0000,,0,0,0.0000,0.0000,0.0000,0,0");
  std::getline(csv, line);
  EXPECT_EQ(split(line).size(), want.size()) << line;
  EXPECT_FALSE(std::getline(csv, line));
}

// Rows of a distributed engine add the ranks, the bytes rank 0 put into collectives per token and
// the share of time inside them, to the table only when some row ran on several ranks.
TEST(BenchReport, RanksColumnsOnlyForDistributedRows) {
  std::vector<BenchRow> rows = sample_rows(0.0);
  EXPECT_EQ(format_bench(rows, BenchFormat::markdown).find("% comm"), std::string::npos);
  rows[1].result.ranks = 2;
  rows[1].result.comm_bytes_per_token = 377600;
  rows[1].result.comm_fraction = 0.063;
  const std::string md = format_bench(rows, BenchFormat::markdown);
  EXPECT_NE(md.find("| ranks | comm B/token | % comm |"), std::string::npos) << md;
  EXPECT_NE(md.find("| 2 | 377.60 KB | 6.3 |"), std::string::npos) << md;
  const auto j = nlohmann::ordered_json::parse(format_bench(rows, BenchFormat::json));
  EXPECT_EQ(j[1]["ranks"], 2);
  EXPECT_DOUBLE_EQ(j[1]["comm_fraction"].get<double>(), 0.063);
}

// bench -b rows: the batch, the per-sequence rate, the bytes of a whole step and the experts a
// layer ran per step appear once a row decodes several sequences.
TEST(BenchReport, BatchedRowsShowTheBatchColumns) {
  std::vector<BenchRow> rows = sample_rows(0.0);
  rows[1].result.test = "tg4 @ d16 b4";
  rows[1].result.batch = 4;
  rows[1].result.experts_per_layer = 12.5;
  const std::string md = format_bench(rows, BenchFormat::markdown);
  EXPECT_NE(md.find("| test | B | t/s | t/s per seq |"), std::string::npos) << md;
  EXPECT_NE(md.find("| tg4 @ d16 b4 | 4 | 11.00 ± 1.41 | 2.75 | 1.23 MB | 4.94 MB | 12.5 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| pp8 | 1 | 105.00 ± 7.07 | 105.00 | - | - | - |"), std::string::npos) << md;
  const auto j = nlohmann::ordered_json::parse(format_bench(rows, BenchFormat::json));
  EXPECT_EQ(j[1]["batch"], 4);
  EXPECT_DOUBLE_EQ(j[1]["seq_tps"].get<double>(), 2.75);
  EXPECT_DOUBLE_EQ(j[1]["bytes_per_step"].get<double>(), 4 * j[1]["bytes_per_token"].get<double>());
  EXPECT_DOUBLE_EQ(j[1]["experts_per_layer"].get<double>(), 12.5);
}

// bench --spec rows: the speculating row and its plain row on the same prompt; the table gains the
// drafted and accepted counts, the acceptance rate and the accepted drafts per decode forward only
// when some row is a speculative test, and shows them on the speculating rows alone.
TEST(BenchReport, SpeculationColumnsOnlyForSpeculativeRows) {
  std::vector<BenchRow> rows = sample_rows(0.0);
  EXPECT_EQ(format_bench(rows, BenchFormat::markdown).find("accepted"), std::string::npos);
  rows[0] = rows[1];
  rows[0].result.test = "tg4 spec ngram";
  rows[0].result.spec = "ngram";
  rows[0].result.drafted = 40;
  rows[0].result.accepted = 30;
  rows[0].result.steps = 12;
  rows[1].result.test = "tg4 prompt";
  rows[1].result.spec = "none";
  rows[1].result.steps = 42;
  rows[0].result.draft_seconds = 0.2;  // 5 ms per draft token
  const std::string md = format_bench(rows, BenchFormat::markdown);
  EXPECT_NE(md.find("| % bw | drafted | accepted | % accepted | accepted/step | draft ms/token |"), std::string::npos) << md;
  EXPECT_NE(md.find("| tg4 spec ngram | 11.00 ± 1.41 | 1.23 MB | 0.01 | 0.1 | 40 | 30 | 75.0 | 2.50 | 5.00 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| tg4 prompt | 11.00 ± 1.41 | 1.23 MB | 0.01 | 0.1 | - | - | - | - | - |"), std::string::npos) << md;
  const auto j = nlohmann::ordered_json::parse(format_bench(rows, BenchFormat::json));
  EXPECT_EQ(j[0]["spec"], "ngram");
  EXPECT_EQ(j[0]["drafted_tokens"], 40);
  EXPECT_EQ(j[0]["accepted_tokens"], 30);
  EXPECT_DOUBLE_EQ(j[0]["acceptance_rate"].get<double>(), 0.75);
  EXPECT_DOUBLE_EQ(j[0]["accepted_per_step"].get<double>(), 2.5);
  EXPECT_DOUBLE_EQ(j[0]["draft_ms_per_token"].get<double>(), 5.0);
  EXPECT_EQ(j[1]["spec"], "none");
  EXPECT_EQ(j[1]["drafted_tokens"], 0);
  EXPECT_DOUBLE_EQ(j[1]["acceptance_rate"].get<double>(), 0.0);
}

TEST(BenchReport, RowDescribesTheEngine) {
  const Engine engine = Engine::load(testing::golden_dir("qwen3_moe"));
  BenchResult pp{.test = "pp8", .tokens = 8, .tps = {1000.0}, .mean = 1000.0, .sd = 0, .bytes_per_token = 0, .gbps = 0};
  const BenchRow row = bench_row(engine, 3, pp, 20.0);
  EXPECT_EQ(row.model.rfind("qwen3_moe ", 0), 0u) << row.model;
  EXPECT_NE(row.model.find("f32"), std::string::npos) << row.model;
  EXPECT_NE(row.params.find(" / "), std::string::npos) << "an MoE shows its active parameters: " << row.params;
  EXPECT_EQ(row.backend, "CPU");
  EXPECT_EQ(row.threads, 3);
  EXPECT_DOUBLE_EQ(row.ceiling_gbps, 20.0);
  EXPECT_DOUBLE_EQ(row.tflops, prefill_flops_per_token(engine) * 1000.0 / 1e12);
  BenchResult tg{.test = "tg4", .tokens = 4, .tps = {10.0}, .mean = 10.0, .sd = 0, .bytes_per_token = 5000, .gbps = 0.05};
  EXPECT_EQ(bench_row(engine, 3, tg, 20.0).tflops, 0.0);  // a decode row has no TFLOP/s
}

}  // namespace
}  // namespace moerun
