// moerun bench: tokens/s in llama-bench's conventions, plus bytes per token, GB/s and the fraction of
// a read-bandwidth ceiling measured at start-up. Markdown on stdout (or JSON / CSV); notes on stderr.

#include <algorithm>
#include <cstdio>
#include <thread>
#include <string>

#include <nlohmann/json.hpp>

#include "moerun/bench.h"
#include "cli_io.h"
#include "engine_flags.h"
#include "moerun/commands.h"
#include "moerun/error.h"
#include "validators.h"

namespace moerun::cli {
namespace {

std::string human(double v, const char* const units[], double step) {
  int u = 0;
  while (v >= step && units[u + 1]) {
    v /= step;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

struct Row {
  std::string model, size, params, backend;
  int threads;
  BenchResult r;
  double ceiling;
  double gemm_ceiling = 0;  // TFLOP/s (CUDA only)
  double tflops = 0;        // pp rows: dense-projection TFLOP/s achieved
};

std::string md_table(const std::vector<Row>& rows) {
  static const char* const kBytes[] = {"B", "KB", "MB", "GB", nullptr};
  const bool gemm = std::any_of(rows.begin(), rows.end(), [](const Row& x) { return x.gemm_ceiling > 0; });
  std::string out = std::string("| model | size | params | backend | threads | test | t/s | B/token | GB/s | % bw |") +
                    (gemm ? " TFLOP/s | % gemm |" : "") + "\n| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |" +
                    (gemm ? " ---: | ---: |" : "") + "\n";
  for (const Row& x : rows) {
    const bool tg = x.r.bytes_per_token > 0;
    char gbps[32] = "-", pct[32] = "-", tf[32] = "-", tfp[32] = "-", buf[640];
    if (tg) {
      std::snprintf(gbps, sizeof gbps, "%.2f", x.r.gbps);
      std::snprintf(pct, sizeof pct, "%.1f", 100.0 * x.r.gbps / x.ceiling);
    } else if (x.gemm_ceiling > 0) {
      std::snprintf(tf, sizeof tf, "%.1f", x.tflops);
      std::snprintf(tfp, sizeof tfp, "%.1f", 100.0 * x.tflops / x.gemm_ceiling);
    }
    std::snprintf(buf, sizeof buf, "| %s | %s | %s | %s | %d | %s | %.2f ± %.2f | %s | %s | %s |", x.model.c_str(),
                  x.size.c_str(), x.params.c_str(), x.backend.c_str(), x.threads, x.r.test.c_str(), x.r.mean, x.r.sd,
                  tg ? human(x.r.bytes_per_token, kBytes, 1000).c_str() : "-", gbps, pct);
    out += buf;
    if (gemm) out += std::string(" ") + tf + " | " + tfp + " |";
    out += "\n";
  }
  return out;
}

nlohmann::ordered_json row_json(const Row& x) {
  return {{"model", x.model}, {"size", x.size}, {"params", x.params}, {"backend", x.backend}, {"threads", x.threads},
          {"test", x.r.test}, {"tokens", x.r.tokens}, {"tps_mean", x.r.mean}, {"tps_sd", x.r.sd}, {"tps", x.r.tps},
          {"bytes_per_token", x.r.bytes_per_token}, {"gbps", x.r.gbps}, {"ceiling_gbps", x.ceiling},
          {"bw_fraction", x.r.gbps > 0 ? x.r.gbps / x.ceiling : 0.0}, {"tflops", x.tflops},
          {"gemm_ceiling_tflops", x.gemm_ceiling}, {"gemm_fraction", x.gemm_ceiling > 0 ? x.tflops / x.gemm_ceiling : 0.0}};
}

struct BenchOptions {
  std::string model, synthetic, output = "md";
  std::vector<int> prompt{512}, gen{128}, depth{0};
  std::vector<int> threads{static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))};
  int reps = 5, layers = 0, experts = 0;
  uint64_t seed = 0;
  EngineFlags engine;
};

// The rows of every test for one engine (one thread count), after measuring its ceilings.
void append_rows(const Engine& engine, const BenchOptions& opt, int threads, std::vector<Row>& rows) {
  const ModelConfig& c = engine.config();
  const bool on_gpu = engine.backend() == BackendKind::cuda;
  const BandwidthCeiling ceiling = on_gpu ? measure_device_bandwidth() : measure_read_bandwidth(threads);
  const double gemm_ceiling = on_gpu ? measure_device_gemm_tflops() : 0.0;
  if (on_gpu) {
    std::fprintf(stderr, "# device bandwidth ceiling: %.1f GB/s (device-to-device copy, read + write bytes, best of 5)\n", ceiling.gbps);
    std::fprintf(stderr, "# device GEMM ceiling: %.1f TFLOP/s (cuBLAS bf16, fp32 accumulation)\n", gemm_ceiling);
  } else {
    std::fprintf(stderr, "# read bandwidth ceiling: %.1f GB/s (%d thread%s, %llu MiB buffer, best of 5)\n", ceiling.gbps,
                 threads, threads == 1 ? "" : "s", static_cast<unsigned long long>(ceiling.bytes >> 20));
  }

  static const char* const kCount[] = {"", "K", "M", "B", nullptr};
  static const char* const kSize[] = {"B", "KiB", "MiB", "GiB", nullptr};
  uint64_t weight_bytes = 0;
  for (const TensorRecord& t : engine.model().tensors()) weight_bytes += t.nbytes;
  std::string dtype = engine.weights().layers.front().o_proj.weight ? std::string(dtype_name(engine.weights().layers.front().o_proj.weight.dtype())) : "";
  for (char& ch : dtype) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  Row base{.model = std::string(c.model_type) + " " + human(static_cast<double>(engine.model().total_params()), kCount, 1000) + " " + dtype,
           .size = weight_bytes ? human(static_cast<double>(weight_bytes), kSize, 1024) : "in memory",
           .params = human(static_cast<double>(engine.model().total_params()), kCount, 1000) +
                     (c.is_moe() ? " / " + human(static_cast<double>(engine.model().active_params()), kCount, 1000) : ""),
           .backend = on_gpu ? "CUDA" : "CPU", .threads = on_gpu ? 1 : threads, .r = {}, .ceiling = ceiling.gbps,
           .gemm_ceiling = gemm_ceiling};
  const double flops = prefill_flops_per_token(engine);
  for (int d : opt.depth) {
    for (int n : opt.prompt)
      if (n > 0) {
        rows.push_back(base);
        rows.back().r = bench_prefill(engine, n, opt.reps, d);
        rows.back().tflops = flops * rows.back().r.mean / 1e12;
      }
    for (int n : opt.gen)
      if (n > 0) rows.push_back(base), rows.back().r = bench_decode(engine, n, opt.reps, d);
  }
}

}  // namespace

void add_bench_command(CLI::App& root, std::vector<Command>& commands) {
  auto opt = std::make_shared<BenchOptions>();
  CLI::App* app = root.add_subcommand("bench", "Measure prefill (pp) and decode (tg) tokens/s, llama-bench style");
  app->add_option("-m,--model", opt->model, "model directory (default: $MOERUN_MODEL or models/default)");
  constexpr int kMaxTokens = 1 << 24;
  app->add_option("-p,--n-prompt", opt->prompt, "prefill test sizes (pp); 0 skips")->delimiter(',')->check(integer_in(0, kMaxTokens));
  app->add_option("-n,--n-gen", opt->gen, "decode test sizes (tg); 0 skips")->delimiter(',')->check(integer_in(0, kMaxTokens));
  app->add_option("-d,--n-depth", opt->depth, "cached tokens before each test (llama-bench's -d)")->delimiter(',')->check(integer_in(0, kMaxTokens));
  app->add_option("-r,--repetitions", opt->reps, "timed repetitions per test (after one warm-up)")->check(integer_in(1, 1000));
  app->add_option("-t,--threads", opt->threads, "CPU thread counts, e.g. 1,2 (default: one per hardware thread)")
      ->delimiter(',')
      ->check(thread_count());
  app->add_option("-o,--output", opt->output, "output format")->check(CLI::IsMember({"md", "json", "csv"}));
  app->add_option("--synthetic", opt->synthetic, "benchmark a config.json's architecture with random weights made in memory");
  app->add_option("--layers", opt->layers, "with --synthetic: cap num_hidden_layers")->check(integer_in(1, 4096));
  app->add_option("--experts", opt->experts, "with --synthetic: cap the routed experts per layer")->check(integer_in(1, 65536));
  app->add_option("--seed", opt->seed, "with --synthetic: seed of the random weights")->check(seed_value());
  opt->engine.add_to(app);
  commands.push_back({app, [opt] {
    std::vector<Row> rows;
    for (const int threads : opt->threads) {
      // One engine per thread count (its pool is sized at creation); the weights map again, cheaply.
      Model model = [&] {
        if (opt->synthetic.empty()) return Model::load(opt->model.empty() ? default_model_dir() : opt->model);
        ConfigOverrides o;
        if (opt->layers > 0) o.num_hidden_layers = opt->layers;
        if (opt->experts > 0) o.max_routed_experts = opt->experts;
        const ModelConfig config = load_model_config(opt->synthetic, o);
        std::fprintf(stderr, "# making random weights for %s (%lld layers)\n", opt->synthetic.c_str(),
                     static_cast<long long>(config.num_hidden_layers));
        return Model::synthetic(config, opt->seed);
      }();
      EngineOptions eo;
      eo.threads = threads;
      eo.context_override = true;  // -d and -p may pass the trained context: random ids measure speed, not text
      opt->engine.apply(eo);
      const Engine engine = Engine::from_model(std::move(model), eo);
      append_rows(engine, *opt, threads, rows);
      if (engine.backend() == BackendKind::cuda) break;  // thread counts are a CPU matter
    }
    std::string out;
    if (opt->output == "md") {
      out = md_table(rows);
    } else if (opt->output == "json") {
      nlohmann::ordered_json j = nlohmann::ordered_json::array();
      for (const Row& x : rows) j.push_back(row_json(x));
      out = j.dump(2) + "\n";
    } else {
      out = "model,size,params,backend,threads,test,tokens,tps_mean,tps_sd,bytes_per_token,gbps,ceiling_gbps,bw_fraction,tflops,gemm_fraction\n";
      for (const Row& x : rows) {
        char buf[512];
        std::snprintf(buf, sizeof buf, "\"%s\",\"%s\",\"%s\",%s,%d,\"%s\",%d,%.4f,%.4f,%.0f,%.4f,%.4f,%.4f,%.4f,%.4f\n", x.model.c_str(),
                      x.size.c_str(), x.params.c_str(), x.backend.c_str(), x.threads, x.r.test.c_str(), x.r.tokens,
                      x.r.mean, x.r.sd, x.r.bytes_per_token, x.r.gbps, x.ceiling, x.r.gbps > 0 ? x.r.gbps / x.ceiling : 0.0,
                      x.tflops, x.gemm_ceiling > 0 ? x.tflops / x.gemm_ceiling : 0.0);
        out += buf;
      }
    }
    write_out(out);
    return 0;
  }});
}

}  // namespace moerun::cli
