#pragma once
// Flags that choose how a model runs, shared by run, chat, bench and logits: the backend and the
// load-time weight quantization.

#include <string>

#include <CLI/CLI.hpp>

#include "moerun/engine.h"

namespace moerun::cli {

struct EngineFlags {
  std::string backend = "auto", quant = "none";

  void add_to(CLI::App* app) {
    app->add_option("--backend", backend, "where to run: cpu, cuda, or auto (cuda when a GPU is usable)")
        ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
    app->add_option("--quant", quant, "quantize weights at load (CPU backend): none, q8 (int8) or q4 (4-bit), blocks of 32")
        ->check(CLI::IsMember({"none", "q8", "q4"}));
  }
  void apply(EngineOptions& eo) const {
    eo.backend = backend == "cpu" ? BackendKind::cpu : backend == "cuda" ? BackendKind::cuda : BackendKind::automatic;
    eo.quant = quant == "q8" ? WeightQuant::q8 : quant == "q4" ? WeightQuant::q4 : WeightQuant::none;
    // A quantized model is a CPU-backend model: auto picks the CPU for it.
    if (eo.quant != WeightQuant::none && eo.backend == BackendKind::automatic) eo.backend = BackendKind::cpu;
  }
};

}  // namespace moerun::cli
