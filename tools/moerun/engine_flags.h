#pragma once
// Flags that choose how a model runs, shared by run, chat, bench, logits and perplexity: the backend,
// the load-time weight quantization, and whether tensors the config does not use may be left out.

#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "moerun/engine.h"
#include "moerun/plan.h"

namespace moerun::cli {

struct EngineFlags {
  std::string backend = "auto", quant = "none", fp8 = "keep", kv_type = "", split = "auto";
  bool ignore_unexpected_tensors = false;
  bool no_memory_check = false;
  bool mlock = false;

  void add_to(CLI::App* app) {
    app->add_option("--backend", backend, "where to run: cpu, cuda, or auto (cuda when a GPU is usable)")
        ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
    app->add_option("--quant", quant, "quantize weights at load (CPU backend): none, q8 (int8) or q4 (4-bit), blocks of 32")
        ->check(CLI::IsMember({"none", "q8", "q4"}));
    app->add_option("--fp8", fp8,
                    "FP8 checkpoints (DeepSeek-V3): keep (the kernels, CPU and CUDA, read the FP8 weights with their block scales as they are: zero copy), "
                    "or dequantize at load to bf16 or f32 (twice / four times the memory)")
        ->check(CLI::IsMember({"keep", "bf16", "f32"}));
    app->add_option("--kv-type", kv_type,
                    std::string("KV cache element type: f32, f16, bf16 or q8_0 (blocks of 32 int8 with an fp16 scale); "
                                "default ") + std::string(kv_type_name(kDefaultKvType)) + " on the CPU, bf16 on CUDA (which has no q8_0)")
        ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0"}));
    app->add_option("--split", split,
                    "under mpirun: how the model is split over the ranks: ep (experts), tp (heads, FFN columns, "
                    "vocabulary), ep+tp (experts by rank, the rest by columns), or auto (ep+tp for MoE models, tp for dense)")
        ->check(CLI::IsMember({"auto", "ep", "tp", "ep+tp"}));
    app->add_flag("--mlock", mlock, "lock the weights in memory once loaded (needs ulimit -l to allow it)");
    app->add_flag("--ignore-unexpected-tensors", ignore_unexpected_tensors,
                  "run although the checkpoint holds tensors config.json does not use (e.g. more layers than "
                  "num_hidden_layers); they are left out");
    app->add_flag("--no-memory-check", no_memory_check,
                  "load even when the memory plan (moerun info --plan) says the model does not fit this machine");
  }
  void apply(EngineOptions& eo) const {
    eo.backend = backend == "cpu" ? BackendKind::cpu : backend == "cuda" ? BackendKind::cuda : BackendKind::automatic;
    eo.quant = quant == "q8" ? WeightQuant::q8 : quant == "q4" ? WeightQuant::q4 : WeightQuant::none;
    eo.allow_unexpected_tensors = ignore_unexpected_tensors;  // (auto with --quant picks the CPU: Engine::load)
    eo.memory_check = !no_memory_check;
    eo.fp8_dequant = fp8 == "bf16" ? DType::bf16 : fp8 == "f32" ? DType::f32 : DType::f8_e4m3;
    if (!kv_type.empty()) eo.kv_type = parse_kv_type(kv_type);
    eo.mlock = mlock;
    eo.split = parse_split(split);
  }
};

// One line on stderr when `--backend auto` chose the CPU although a GPU is usable (the model's plan
// does not fit it): what it needs there and what is free.
inline void report_backend_note(const Engine& engine) {
  if (!engine.plan().backend_note.empty()) std::fprintf(stderr, "moerun: %s\n", engine.plan().backend_note.c_str());
}

}  // namespace moerun::cli
