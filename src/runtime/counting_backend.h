#pragma once
// A backend that forwards every op to another and counts the calls by op: the launch count of a
// step without a GPU (tests/runtime/launch_count_test.cpp), and next to the CUDA graph's node count
// on one (bench/cuda_kernels_bench.cpp). Installed through set_backend_wrapper (runtime/backend.h).

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "runtime/backend.h"

namespace moerun::runtime {

enum class OpKind : uint8_t {
  matmul, matmul_group, rms_norm, rope, attention, gated_act, route, embed, add, clamp, store_rows, copy, head_matmul, moe, count
};
inline constexpr std::array<std::string_view, static_cast<size_t>(OpKind::count)> kOpNames = {
    "matmul", "matmul_group", "rms_norm", "rope", "attention", "gated_act", "route", "embed",
    "add", "clamp", "store_rows", "copy", "head_matmul", "moe"};

// Calls by op since the last reset. A matmul_group counts once (one pass; CUDA: one launch on the
// GEMV path) and its entries in `group_entries`; attention_many counts one attention per sequence.
struct OpCounts {
  std::array<int64_t, static_cast<size_t>(OpKind::count)> calls{};
  int64_t group_entries = 0;
  // The last recorded step (CUDA graphs): the ops enqueued while it was recorded, and what the
  // recording launches (its graph's kernel and copy/set nodes).
  int64_t recorded_ops = 0;
  Backend::RecordedLaunches recorded{};
  int64_t& operator[](OpKind k) { return calls[static_cast<size_t>(k)]; }
  int64_t operator[](OpKind k) const { return calls[static_cast<size_t>(k)]; }
  int64_t total() const {
    int64_t t = 0;
    for (int64_t c : calls) t += c;
    return t;
  }
};

class CountingBackend final : public Backend {
 public:
  // counts: where the calls are added (shared by every session the wrapper made).
  CountingBackend(std::unique_ptr<Backend> inner, std::shared_ptr<OpCounts> counts)
      : inner_(std::move(inner)), counts_(std::move(counts)) {}

  BackendKind kind() const noexcept override { return inner_->kind(); }
  void reserve(Buffer& b, size_t bytes) override { inner_->reserve(b, bytes); }
  void upload(void* dst, const void* src, size_t bytes) override { inner_->upload(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { inner_->download(dst, src, bytes); }
  const void* weight(const Tensor& t) const override { return inner_->weight(t); }

  void matmul(const MatmulParams& p) override {
    count(OpKind::matmul);
    inner_->matmul(p);
  }
  void matmul_group(std::span<const MatmulParams> ps) override {
    count(OpKind::matmul_group);
    counts_->group_entries += static_cast<int64_t>(ps.size());
    inner_->matmul_group(ps);
  }
  void rms_norm(const RmsNormParams& p) override {
    count(OpKind::rms_norm);
    inner_->rms_norm(p);
  }
  void rope(const RopeParams& p) override {
    count(OpKind::rope);
    inner_->rope(p);
  }
  void attention(const AttentionParams& p) override {
    count(OpKind::attention);
    inner_->attention(p);
  }
  void attention_many(std::span<const AttentionParams> ps) override {
    (*counts_)[OpKind::attention] += static_cast<int64_t>(ps.size());
    inner_->attention_many(ps);
  }
  void gated_act(const GatedActParams& p) override {
    count(OpKind::gated_act);
    inner_->gated_act(p);
  }
  void route(const RouteParams& p) override {
    count(OpKind::route);
    inner_->route(p);
  }
  void embed(const EmbedParams& p) override {
    count(OpKind::embed);
    inner_->embed(p);
  }
  void add(const AddParams& p) override {
    count(OpKind::add);
    inner_->add(p);
  }
  void clamp(const ClampParams& p) override {
    count(OpKind::clamp);
    inner_->clamp(p);
  }
  void store_rows(const StoreRowsParams& p) override {
    count(OpKind::store_rows);
    inner_->store_rows(p);
  }
  void copy(const CopyParams& p) override {
    count(OpKind::copy);
    inner_->copy(p);
  }
  void head_matmul(const HeadMatmulParams& p) override {
    count(OpKind::head_matmul);
    inner_->head_matmul(p);
  }
  void moe(const MoeParams& p) override {
    count(OpKind::moe);
    inner_->moe(p);
  }
  void* native_stream() const noexcept override { return inner_->native_stream(); }
  void bind_thread() override { inner_->bind_thread(); }

  // A replayed recording enqueues no op through here: only the steps that record or run plainly count.
  bool can_record() const noexcept override { return inner_->can_record(); }
  void begin_record() override {
    inner_->begin_record();
    recording_ = true;
    recording_start_ = counts_->total();
  }
  void end_record() override {
    recording_ = false;
    inner_->end_record();
    counts_->recorded_ops = counts_->total() - recording_start_;
    counts_->recorded = inner_->recorded_launches();
  }
  bool has_record() const noexcept override { return inner_->has_record(); }
  void replay() override { inner_->replay(); }
  void drop_record() override {
    recording_ = false;
    inner_->drop_record();
  }
  uint64_t generation() const noexcept override { return inner_->generation(); }
  RecordedLaunches recorded_launches() const override { return inner_->recorded_launches(); }

 private:
  void count(OpKind k) { ++(*counts_)[k]; }
  std::unique_ptr<Backend> inner_;
  std::shared_ptr<OpCounts> counts_;
  bool recording_ = false;
  int64_t recording_start_ = 0;
};

// Counts the ops of the sessions made while it lives (set_backend_wrapper), restoring no wrapper
// when it goes. One at a time.
class ScopedOpCounting {
 public:
  ScopedOpCounting() {
    set_backend_wrapper([c = counts_](std::unique_ptr<Backend> b) -> std::unique_ptr<Backend> {
      return std::make_unique<CountingBackend>(std::move(b), c);
    });
  }
  ~ScopedOpCounting() { set_backend_wrapper({}); }
  ScopedOpCounting(const ScopedOpCounting&) = delete;
  ScopedOpCounting& operator=(const ScopedOpCounting&) = delete;
  OpCounts& counts() { return *counts_; }

 private:
  std::shared_ptr<OpCounts> counts_ = std::make_shared<OpCounts>();
};

}  // namespace moerun::runtime
