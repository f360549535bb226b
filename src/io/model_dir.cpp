// Model directory discovery (config, shards, tokenizer files) and the sharded weight store.

#include <algorithm>
#include <set>

#include "io/json_util.h"
#include "io/weight_store.h"
#include "moerun/error.h"
#include "util/strings.h"

namespace moerun {
namespace fs = std::filesystem;
using detail::cat;
using detail::quote;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";

// weight_map of model.safetensors.index.json, checked for shape and for safe shard names.
std::map<std::string, std::string> read_index(const fs::path& index) {
  const io::Json j = io::parse_json_text(io::read_text_file(index), index.string());
  const io::JsonFields f(j, index.string());
  const io::Json* map = f.get("weight_map");
  if (!map) throw Error(index.string(), "missing required field 'weight_map'");
  if (!map->is_object()) f.fail("weight_map", cat("expected an object of tensor name -> shard file, found ", io::json_type_name(*map)));
  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : map->items()) {
    if (!shard.is_string())
      f.fail("weight_map", cat("tensor ", quote(name), ": expected a shard file name, found ", io::brief(shard)));
    const std::string s = shard.get<std::string>();
    // A shard is a plain file next to the index; anything else could read outside the model.
    if (s.empty() || s.find('/') != std::string::npos || s.find('\\') != std::string::npos || s == "." || s == "..")
      f.fail("weight_map", cat("tensor ", quote(name), ": shard ", quote(s), " is not a plain file name in the model directory"));
    out.emplace(name, s);
  }
  if (out.empty()) f.fail("weight_map", "lists no tensors");
  return out;
}

bool has_chat_template_key(const fs::path& tokenizer_config) {
  const io::Json j = io::parse_json_text(io::read_text_file(tokenizer_config), tokenizer_config.string());
  if (!j.is_object()) return false;
  const auto it = j.find("chat_template");
  return it != j.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty());
}

}  // namespace

ModelFiles discover_model_files(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw Error(dir.string(), "no such file or directory");
  if (!fs::is_directory(dir, ec)) throw Error(dir.string(), "not a directory (expected a Hugging Face model directory)");

  ModelFiles m;
  m.dir = dir;
  auto present = [&](const char* name) { return io::find_regular_file(dir / name); };  // Error if not a file
  m.config = present("config.json");
  m.index = present(kIndexName);
  m.tokenizer_json = present("tokenizer.json");
  m.tokenizer_model = present("tokenizer.model");
  m.tokenizer_config = present("tokenizer_config.json");
  m.generation_config = present("generation_config.json");
  m.chat_template_file = present("chat_template.jinja");
  if (m.chat_template_file.empty()) m.chat_template_file = present("chat_template.json");
  m.has_chat_template = !m.chat_template_file.empty() ||
                        (!m.tokenizer_config.empty() && has_chat_template_key(m.tokenizer_config));

  if (!m.index.empty()) {
    std::set<std::string> shard_names;
    for (const auto& [name, shard] : read_index(m.index)) shard_names.insert(shard);
    std::vector<std::string> missing;
    for (const std::string& s : shard_names) {
      if (!io::find_regular_file(dir / s).empty()) {
        m.shards.push_back(dir / s);
      } else {
        missing.push_back(cat("shard ", quote(s), " is listed but missing"));
      }
    }
    if (!missing.empty())
      throw Error(m.index.string(), cat(missing.size(), " of ", shard_names.size(), " shards missing: ",
                                        detail::join_problems(missing)));
  } else if (const fs::path single = present("model.safetensors"); !single.empty()) {
    m.shards.push_back(single);
  } else {
    for (const fs::directory_entry& e : fs::directory_iterator(dir, ec))
      if (e.is_regular_file(ec) && e.path().extension() == ".safetensors") m.shards.push_back(e.path());
    std::sort(m.shards.begin(), m.shards.end());
  }
  if (m.shards.empty()) throw Error(dir.string(), "no *.safetensors weights found");
  return m;
}

namespace io {

WeightStore WeightStore::open(const ModelFiles& files) {
  WeightStore store;
  std::vector<std::string> problems;
  for (const fs::path& p : files.shards) {
    store.shards_.push_back(SafetensorsFile::open(p));
    const int shard = static_cast<int>(store.shards_.size() - 1);
    for (const TensorEntry& e : store.shards_.back()->header().tensors) {
      const auto [it, fresh] = store.tensors_.emplace(e.name, StoredTensor{&e, shard});
      if (!fresh)
        problems.push_back(cat("tensor ", quote(e.name), " is in both ", quote(store.shard_name(it->second.shard)),
                               " and ", quote(store.shard_name(shard))));
    }
  }
  if (!files.index.empty()) {
    const std::map<std::string, std::string> index = read_index(files.index);
    for (const auto& [name, shard] : index) {
      const StoredTensor* t = store.find(name);
      if (!t) {
        problems.push_back(cat("tensor ", quote(name), " is listed in shard ", quote(shard), " but not found there"));
      } else if (store.shard_name(t->shard) != shard) {
        problems.push_back(cat("tensor ", quote(name), " is listed in shard ", quote(shard), " but found in ",
                               quote(store.shard_name(t->shard))));
      }
    }
    for (const auto& [name, t] : store.tensors_)
      if (!index.count(name))
        problems.push_back(cat("tensor ", quote(name), " in shard ", quote(store.shard_name(t.shard)),
                               " is not listed in the index"));
  }
  if (!problems.empty())
    throw Error(files.index.empty() ? files.dir.string() : files.index.string(),
                cat(problems.size(), " problem", problems.size() == 1 ? "" : "s", " between the index and the shards: ",
                    detail::join_problems(problems)));
  return store;
}

const StoredTensor* WeightStore::find(std::string_view name) const noexcept {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace io
}  // namespace moerun
