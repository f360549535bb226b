#pragma once
// The memory plan: every byte an Engine and one Session will hold, by part and by device, computed
// from the model description before anything large is allocated, next to what this machine has.
// Engine::load refuses a plan that does not fit (unless EngineOptions::memory_check is false), the
// allocations follow it (tests compare them), and `moerun info --plan` prints it.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "moerun/config.h"
#include "moerun/engine.h"

namespace moerun {

class Model;

struct MemoryPlan {
  // Weights as the executor runs them, by run-time dtype: views of the mapped safetensors files
  // (read from the page cache: they count against physical memory on the CPU backend) and copies
  // made at load (FP8 dequantized, --quant, f32 norms, misaligned tensors).
  struct Weights {
    std::string dtype;  // "BF16", "F32", "Q4_0", ...
    uint64_t mapped_bytes = 0;
    uint64_t owned_bytes = 0;
  };
  struct Buffer {
    std::string role;  // a workspace role ("x", "logits", ...) or "expert_tables"
    uint64_t bytes = 0;
  };
  // Where bytes live and what is available there.
  struct Device {
    std::string name;           // "host" or "cuda:0"
    uint64_t needed_bytes = 0;
    uint64_t available_bytes = 0;  // host: MemAvailable, or the cgroup's room when lower; cuda: free
    std::string available_source;  // "MemAvailable", "cgroup memory.max", "cudaMemGetInfo", "no device"
    bool fits() const noexcept { return needed_bytes <= available_bytes; }
  };

  BackendKind backend = BackendKind::cpu;  // resolved
  // Why `--backend auto` runs on the CPU although a GPU is usable (the plan does not fit it); empty
  // otherwise. The CLI prints it.
  std::string backend_note;
  // Distributed runs: the plan is one rank's share (weights cut to it, its KV heads, its workspace)
  // against this machine's memory divided by the ranks running on it.
  int rank = 0, ranks = 1;
  std::string split;      // "ep", "tp", "ep+tp" (resolved); empty for one rank
  std::string partition;  // what the rank holds (model::Partition::summary)
  WeightQuant quant = WeightQuant::none;
  int64_t context = 0;
  KvType kv_type = KvType::f32;            // what the KV cache stores (resolved)
  // FP8 checkpoints: the stored FP8 weights' bytes (0: none) and what they become at run time:
  // F8_E4M3 (kept, zero copy), BF16/F32 (dequantized copies) or Q8_0/Q4_0 (--quant).
  uint64_t fp8_source_bytes = 0;
  DType fp8_form = DType::f8_e4m3;

  std::vector<Weights> weights;      // by dtype, largest first
  uint64_t weights_bytes = 0;        // mapped + owned (a tied head once)
  uint64_t weights_mapped_bytes = 0;
  uint64_t weights_owned_bytes = 0;
  uint64_t weights_device_bytes = 0; // CUDA: the uploaded copy (256-byte aligned tensors)
  uint64_t kv_bytes = 0;             // one session's KV cache at `context`
  std::vector<Buffer> workspace;     // one session's named buffers
  uint64_t workspace_bytes = 0;
  uint64_t total_bytes = 0;          // the sum over devices
  uint64_t available_bytes = 0;      // the sum over devices
  std::vector<Device> devices;       // host first
  bool fits = false;

  // One line for a refusal: what is needed by part, what is available, and flags that would fit.
  std::string refusal() const;
  std::string suggestions;  // "--kv-type q8_0 (needs 20.1 GiB) or -c 8192 (needs 20.3 GiB)"; may be empty
};

// The plan of loading `model` with `options` (context 0: the engine's default context). With
// options.ranks > 1 (0: as launched), the plan of rank options.rank's share.
MemoryPlan plan_memory(const Model& model, const EngineOptions& options);

// The plan from a config.json alone, with the weights as `stored`: a checkpoint stores them in its
// torch_dtype (FP8 projections with their f32 block scales when quantization_config says fp8); a
// synthetic model (Model::synthetic) makes bf16 matrices and f32 vectors.
enum class WeightSource : uint8_t { checkpoint, synthetic };
MemoryPlan plan_memory(const ModelConfig& config, const EngineOptions& options, WeightSource stored = WeightSource::checkpoint);

// The plan for people (aligned lines: parts, devices, verdict) and for scripts (one JSON object with
// weights_bytes, kv_bytes, workspace_bytes, total_bytes, available_bytes, fits and the detail).
std::string plan_text(const MemoryPlan& plan);
std::string plan_json(const MemoryPlan& plan);

// Physical memory this process may still use: MemAvailable, or the cgroup's limit minus its usage
// when that is lower. `source` says which.
uint64_t host_available_bytes(std::string* source = nullptr);

}  // namespace moerun
