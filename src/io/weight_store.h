#pragma once
// WeightStore: tensor name -> zero-copy view, over every shard of a model directory. Opening it
// validates every shard's header and the shard index against what the shards really hold.

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/safetensors.h"
#include "moerun/model.h"

namespace moerun::io {

struct StoredTensor {
  const TensorEntry* entry = nullptr;
  int shard = 0;  // index into shards()
};

class WeightStore {
 public:
  static WeightStore open(const ModelFiles& files);

  const StoredTensor* find(std::string_view name) const noexcept;
  Tensor view(const StoredTensor& t) const { return shards_[static_cast<size_t>(t.shard)]->tensor(*t.entry); }
  const std::map<std::string, StoredTensor, std::less<>>& tensors() const noexcept { return tensors_; }
  const std::vector<std::shared_ptr<SafetensorsFile>>& shards() const noexcept { return shards_; }
  std::string shard_name(int shard) const { return shards_[static_cast<size_t>(shard)]->path().filename().string(); }

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> shards_;
  std::map<std::string, StoredTensor, std::less<>> tensors_;
};

}  // namespace moerun::io
