#pragma once
// Engine: a loaded model ready to run (weights prepared once at load). Session: one conversation's
// KV cache and position; feed it token ids, get next-token logits.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "moerun/config.h"
#include "moerun/model.h"

namespace moerun {

enum class MlaMode : uint8_t {
  absorbed,  // attend over the latent cache with the key/value up-projections absorbed (decode form)
  naive,     // decompress per-head K and V from the latent cache first (HF's formulation)
};

// Where the executor runs. auto: CUDA when the build has it and a device is usable, else CPU.
enum class BackendKind : uint8_t { automatic, cpu, cuda };

// Weight quantization applied once at load (CPU backend): q8 = int8 in blocks of 32 with one scale
// per block, q4 = 4-bit in blocks of 32 with one scale per block. Norms, router and embeddings
// stay as they are.
enum class WeightQuant : uint8_t { none, q8, q4 };

struct EngineOptions {
  int64_t context = 0;             // KV-cache positions per session; 0: min(max_position_embeddings, 4096)
  bool context_override = false;   // allow contexts above max_position_embeddings (output degrades)
  DType fp8_dequant = DType::bf16;  // FP8 block-scaled weights are dequantized at load to BF16 or F32
  MlaMode mla = MlaMode::absorbed;
  int threads = 0;                 // CPU threads per session; 0: one per hardware thread
  BackendKind backend = BackendKind::automatic;
  WeightQuant quant = WeightQuant::none;
  // Run although the checkpoint holds tensors the config does not use (Model::unexpected_tensors():
  // e.g. more layers than num_hidden_layers); they are left out. false: loading is an Error.
  bool allow_unexpected_tensors = false;
};

class Engine {
 public:
  static Engine load(const std::filesystem::path& dir, const EngineOptions& options = {});
  static Engine from_model(Model model, const EngineOptions& options = {});

  const Model& model() const noexcept;
  const ModelConfig& config() const noexcept;
  const ModelWeights& weights() const noexcept;  // as prepared for the executor
  const EngineOptions& options() const noexcept;
  int64_t default_context() const noexcept;
  BackendKind backend() const noexcept;  // the backend sessions run on (automatic resolved)

  struct Impl;

 private:
  explicit Engine(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
  friend class Session;
};

class Session {
 public:
  // 0: the engine's default context. Throws Error when the context is above the model's
  // max_position_embeddings (unless EngineOptions::context_override) or when its KV cache and
  // activations do not fit this machine's memory (CPU backend; the message says how much is needed).
  explicit Session(const Engine& engine, int64_t context = 0);
  Session(Session&&) noexcept;
  Session& operator=(Session&&) noexcept;
  ~Session();

  // Runs `ids` at positions [position(), position() + ids.size()) and appends them to the cache
  // (in micro-batches of at most 512 tokens, so a long input needs no more activation memory than
  // a short one). Returns the logits of the last position [V], or of every new position [n, V] when
  // `all_positions`. Throws Error (and changes nothing) if an id is outside the vocabulary, the
  // sequence would pass the context, or the logits are not finite (the error names the first
  // layer whose output was NaN or infinite).
  std::vector<float> forward(std::span<const int32_t> ids, bool all_positions = false);

  int64_t position() const noexcept;  // tokens in the cache
  int64_t context() const noexcept;
  void truncate(int64_t n);  // keep the first n cached tokens (chat turns reuse a common prefix)
  void reset() { truncate(0); }

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moerun
