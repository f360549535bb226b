// bench's report: the rows (bench_row) and their three formats (format_bench), from one column list.

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <string>
#include <variant>

#include <nlohmann/json.hpp>

#include "moerun/bench.h"
#include "moerun/error.h"

namespace moerun {
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

std::string printf1(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

bool is_decode(const BenchRow& x) { return x.result.bytes_per_token > 0; }
bool is_speculating(const BenchRow& x) { return !x.result.spec.empty() && x.result.spec != "none"; }
// A speculation column's cell: the value on a speculating row, "-" on the others.
std::string spec_cell(const BenchRow& x, std::string value) { return is_speculating(x) ? value : std::string("-"); }
double bw_fraction(const BenchRow& x) { return x.result.gbps > 0 ? x.result.gbps / x.ceiling_gbps : 0.0; }
double gemm_fraction(const BenchRow& x) { return x.gemm_ceiling_tflops > 0 ? x.tflops / x.gemm_ceiling_tflops : 0.0; }

// A cell's value: text, a whole number, a real or a list of reals. JSON takes it as it is; CSV
// writes text quoted (unless the column says otherwise), numbers with the column's printf format,
// and a list as one quoted field of space-separated numbers.
using Value = std::variant<std::string, int64_t, double, std::vector<double>>;

struct Column {
  const char* key;                        // JSON key and CSV header
  Value (*value)(const BenchRow&);
  const char* csv_format = "%.4f";        // for reals (and each real of a list)
  bool csv_quote = true;                  // for text
  // The markdown table's column, when it has one: its title, alignment, and the cell.
  const char* md_title = nullptr;
  bool md_right = true;
  bool md_gemm_only = false;              // shown only when some row has a GEMM ceiling
  bool md_batch_only = false;             // shown only when some row decodes several sequences (bench -b)
  bool md_ranks_only = false;             // shown only when some row ran on several ranks (mpirun)
  bool md_spec_only = false;              // shown only when some row is a speculative test (bench --spec)
  std::string (*md)(const BenchRow&) = nullptr;
};

// The one definition of a row, in JSON's key order (scripts read these keys: keep them).
const Column kColumns[] = {
    {.key = "model", .value = [](const BenchRow& x) -> Value { return x.model; },
     .md_title = "model", .md_right = false, .md = [](const BenchRow& x) { return x.model; }},
    {.key = "size", .value = [](const BenchRow& x) -> Value { return x.size; },
     .md_title = "size", .md = [](const BenchRow& x) { return x.size; }},
    {.key = "params", .value = [](const BenchRow& x) -> Value { return x.params; },
     .md_title = "params", .md = [](const BenchRow& x) { return x.params; }},
    {.key = "backend", .value = [](const BenchRow& x) -> Value { return x.backend; }, .csv_quote = false,
     .md_title = "backend", .md_right = false, .md = [](const BenchRow& x) { return x.backend; }},
    {.key = "threads", .value = [](const BenchRow& x) -> Value { return int64_t{x.threads}; },
     .md_title = "threads", .md = [](const BenchRow& x) { return std::to_string(x.threads); }},
    {.key = "kv_type", .value = [](const BenchRow& x) -> Value { return x.kv_type; }, .csv_quote = false,
     .md_title = "kv", .md_right = false, .md = [](const BenchRow& x) { return x.kv_type; }},
    {.key = "test", .value = [](const BenchRow& x) -> Value { return x.result.test; },
     .md_title = "test", .md_right = false, .md = [](const BenchRow& x) { return x.result.test; }},
    {.key = "batch", .value = [](const BenchRow& x) -> Value { return int64_t{x.result.batch}; },
     .md_title = "B", .md_batch_only = true, .md = [](const BenchRow& x) { return std::to_string(x.result.batch); }},
    {.key = "tokens", .value = [](const BenchRow& x) -> Value { return int64_t{x.result.tokens}; }},
    {.key = "tps_mean", .value = [](const BenchRow& x) -> Value { return x.result.mean; },
     .md_title = "t/s",
     .md = [](const BenchRow& x) {
       char buf[96];
       std::snprintf(buf, sizeof buf, "%.2f ± %.2f", x.result.mean, x.result.sd);
       return std::string(buf);
     }},
    {.key = "tps_sd", .value = [](const BenchRow& x) -> Value { return x.result.sd; }},
    // Batched rows: t/s is the aggregate of the batch; per sequence it is that over B.
    {.key = "seq_tps", .value = [](const BenchRow& x) -> Value { return x.result.mean / x.result.batch; },
     .md_title = "t/s per seq", .md_batch_only = true,
     .md = [](const BenchRow& x) { return printf1("%.2f", x.result.mean / x.result.batch); }},
    {.key = "tps", .value = [](const BenchRow& x) -> Value { return x.result.tps; }},
    {.key = "bytes_per_token", .value = [](const BenchRow& x) -> Value { return x.result.bytes_per_token; }, .csv_format = "%.0f",
     .md_title = "B/token",
     .md = [](const BenchRow& x) {
       static const char* const kBytes[] = {"B", "KB", "MB", "GB", nullptr};
       return is_decode(x) ? human(x.result.bytes_per_token, kBytes, 1000) : std::string("-");
     }},
    {.key = "bytes_per_step", .value = [](const BenchRow& x) -> Value { return x.result.bytes_per_token * x.result.batch; },
     .csv_format = "%.0f", .md_title = "B/step", .md_batch_only = true,
     .md = [](const BenchRow& x) {
       static const char* const kBytes[] = {"B", "KB", "MB", "GB", nullptr};
       return is_decode(x) ? human(x.result.bytes_per_token * x.result.batch, kBytes, 1000) : std::string("-");
     }},
    {.key = "experts_per_layer", .value = [](const BenchRow& x) -> Value { return x.result.experts_per_layer; },
     .md_title = "experts/layer", .md_batch_only = true,
     .md = [](const BenchRow& x) { return x.result.experts_per_layer > 0 ? printf1("%.1f", x.result.experts_per_layer) : std::string("-"); }},
    {.key = "gbps", .value = [](const BenchRow& x) -> Value { return x.result.gbps; },
     .md_title = "GB/s", .md = [](const BenchRow& x) { return is_decode(x) ? printf1("%.2f", x.result.gbps) : std::string("-"); }},
    {.key = "ceiling_gbps", .value = [](const BenchRow& x) -> Value { return x.ceiling_gbps; }},
    {.key = "bw_fraction", .value = [](const BenchRow& x) -> Value { return bw_fraction(x); },
     .md_title = "% bw",
     .md = [](const BenchRow& x) {
       return is_decode(x) ? printf1("%.1f", 100.0 * x.result.gbps / x.ceiling_gbps) : std::string("-");
     }},
    {.key = "tflops", .value = [](const BenchRow& x) -> Value { return x.tflops; },
     .md_title = "TFLOP/s", .md_gemm_only = true,
     .md = [](const BenchRow& x) {
       return !is_decode(x) && x.gemm_ceiling_tflops > 0 ? printf1("%.1f", x.tflops) : std::string("-");
     }},
    {.key = "gemm_ceiling_tflops", .value = [](const BenchRow& x) -> Value { return x.gemm_ceiling_tflops; }},
    {.key = "gemm_fraction", .value = [](const BenchRow& x) -> Value { return gemm_fraction(x); },
     .md_title = "% gemm", .md_gemm_only = true,
     .md = [](const BenchRow& x) {
       return !is_decode(x) && x.gemm_ceiling_tflops > 0 ? printf1("%.1f", 100.0 * x.tflops / x.gemm_ceiling_tflops)
                                                         : std::string("-");
     }},
    // Distributed engines (mpirun): after the columns scripts already read.
    {.key = "ranks", .value = [](const BenchRow& x) -> Value { return int64_t{x.result.ranks}; },
     .md_title = "ranks", .md_ranks_only = true, .md = [](const BenchRow& x) { return std::to_string(x.result.ranks); }},
    {.key = "comm_bytes_per_token", .value = [](const BenchRow& x) -> Value { return x.result.comm_bytes_per_token; },
     .csv_format = "%.0f", .md_title = "comm B/token", .md_ranks_only = true,
     .md = [](const BenchRow& x) {
       static const char* const kBytes[] = {"B", "KB", "MB", "GB", nullptr};
       return human(x.result.comm_bytes_per_token, kBytes, 1000);
     }},
    {.key = "comm_fraction", .value = [](const BenchRow& x) -> Value { return x.result.comm_fraction; },
     .md_title = "% comm", .md_ranks_only = true, .md = [](const BenchRow& x) { return printf1("%.1f", 100.0 * x.result.comm_fraction); }},
    // Speculative decoding (bench --spec): after the columns scripts already read. The plain row of
    // a speculative test says "none"; other tests "".
    {.key = "spec", .value = [](const BenchRow& x) -> Value { return x.result.spec; }, .csv_quote = false},
    {.key = "drafted_tokens", .value = [](const BenchRow& x) -> Value { return x.result.drafted; },
     .md_title = "drafted", .md_spec_only = true, .md = [](const BenchRow& x) { return spec_cell(x, std::to_string(x.result.drafted)); }},
    {.key = "accepted_tokens", .value = [](const BenchRow& x) -> Value { return x.result.accepted; },
     .md_title = "accepted", .md_spec_only = true, .md = [](const BenchRow& x) { return spec_cell(x, std::to_string(x.result.accepted)); }},
    {.key = "acceptance_rate", .value = [](const BenchRow& x) -> Value { return x.result.acceptance(); },
     .md_title = "% accepted", .md_spec_only = true,
     .md = [](const BenchRow& x) { return spec_cell(x, printf1("%.1f", 100.0 * x.result.acceptance())); }},
    {.key = "accepted_per_step", .value = [](const BenchRow& x) -> Value { return x.result.accepted_per_step(); },
     .md_title = "accepted/step", .md_spec_only = true,
     .md = [](const BenchRow& x) { return spec_cell(x, printf1("%.2f", x.result.accepted_per_step())); }},
    {.key = "draft_ms_per_token", .value = [](const BenchRow& x) -> Value { return x.result.draft_ms_per_token(); },
     .md_title = "draft ms/token", .md_spec_only = true,
     .md = [](const BenchRow& x) { return spec_cell(x, printf1("%.2f", x.result.draft_ms_per_token())); }},
    // Decode rows: ops per step and (CUDA) the recorded graph's kernel launches; JSON and CSV only.
    {.key = "ops_per_token", .value = [](const BenchRow& x) -> Value { return x.result.ops_per_token; }},
    {.key = "launches_per_token", .value = [](const BenchRow& x) -> Value { return x.result.launches_per_token; }},
};

std::string csv_cell(const Column& c, const Value& v) {
  if (const auto* s = std::get_if<std::string>(&v)) return c.csv_quote ? "\"" + *s + "\"" : *s;
  if (const auto* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&v)) return printf1(c.csv_format, *d);
  std::string list;
  for (double d : std::get<std::vector<double>>(v)) list += (list.empty() ? "" : " ") + printf1(c.csv_format, d);
  return "\"" + list + "\"";
}

nlohmann::ordered_json json_cell(const Value& v) {
  return std::visit([](const auto& x) { return nlohmann::ordered_json(x); }, v);
}

std::string markdown(std::span<const BenchRow> rows) {
  const bool gemm = std::any_of(rows.begin(), rows.end(), [](const BenchRow& x) { return x.gemm_ceiling_tflops > 0; });
  const bool batched = std::any_of(rows.begin(), rows.end(), [](const BenchRow& x) { return x.result.batch > 1; });
  const bool ranks = std::any_of(rows.begin(), rows.end(), [](const BenchRow& x) { return x.result.ranks > 1; });
  const bool spec = std::any_of(rows.begin(), rows.end(), [](const BenchRow& x) { return !x.result.spec.empty(); });
  auto shown = [&](const Column& c) {
    return c.md && (gemm || !c.md_gemm_only) && (batched || !c.md_batch_only) && (ranks || !c.md_ranks_only) &&
           (spec || !c.md_spec_only);
  };
  std::string title = "|", rule = "|";
  for (const Column& c : kColumns)
    if (shown(c)) {
      title += std::string(" ") + c.md_title + " |";
      rule += c.md_right ? " ---: |" : " --- |";
    }
  std::string out = title + "\n" + rule + "\n";
  for (const BenchRow& x : rows) {
    out += "|";
    for (const Column& c : kColumns)
      if (shown(c)) out += " " + c.md(x) + " |";
    out += "\n";
  }
  return out;
}

}  // namespace

BenchRow bench_row(const Engine& engine, int threads, const BenchResult& result, double ceiling_gbps, double gemm_ceiling_tflops) {
  static const char* const kCount[] = {"", "K", "M", "B", nullptr};
  static const char* const kSize[] = {"B", "KiB", "MiB", "GiB", nullptr};
  const ModelConfig& c = engine.config();
  const bool on_gpu = engine.backend() == BackendKind::cuda;
  uint64_t weight_bytes = 0;
  for (const TensorRecord& t : engine.model().tensors()) weight_bytes += t.nbytes;
  const Tensor& o_proj = engine.weights().layers.front().o_proj.weight;
  std::string dtype = o_proj ? std::string(dtype_name(o_proj.dtype())) : "";
  for (char& ch : dtype) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const std::string total = human(static_cast<double>(engine.model().total_params()), kCount, 1000);
  BenchRow row;
  row.model = std::string(c.model_type) + " " + total + " " + dtype;
  row.size = weight_bytes ? human(static_cast<double>(weight_bytes), kSize, 1024) : "in memory";
  row.params = total + (c.is_moe() ? " / " + human(static_cast<double>(engine.model().active_params()), kCount, 1000) : "");
  row.backend = on_gpu ? "CUDA" : "CPU";
  row.threads = on_gpu ? 1 : threads;
  row.kv_type = std::string(kv_type_name(engine.kv_type()));
  row.result = result;
  row.ceiling_gbps = ceiling_gbps;
  row.gemm_ceiling_tflops = gemm_ceiling_tflops;
  if (result.bytes_per_token == 0) row.tflops = prefill_flops_per_token(engine) * result.mean / 1e12;  // a pp row
  return row;
}

std::string format_bench(std::span<const BenchRow> rows, BenchFormat format) {
  switch (format) {
    case BenchFormat::markdown:
      return markdown(rows);
    case BenchFormat::json: {
      nlohmann::ordered_json j = nlohmann::ordered_json::array();
      for (const BenchRow& x : rows) {
        nlohmann::ordered_json o = nlohmann::ordered_json::object();
        for (const Column& c : kColumns) o[c.key] = json_cell(c.value(x));
        j.push_back(std::move(o));
      }
      return j.dump(2) + "\n";
    }
    case BenchFormat::csv: {
      std::string out;
      for (const Column& c : kColumns) out += std::string(&c == kColumns ? "" : ",") + c.key;
      out += "\n";
      for (const BenchRow& x : rows) {
        for (const Column& c : kColumns) out += (&c == kColumns ? "" : ",") + csv_cell(c, c.value(x));
        out += "\n";
      }
      return out;
    }
  }
  throw Error("bench", "unknown output format");
}

}  // namespace moerun
