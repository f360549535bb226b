#include "tokenizer/sentencepiece.h"

#include <sentencepiece_processor.h>

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::tok {

using detail::cat;

namespace {

// Just enough of the protobuf wire format to read two flags of the serialized ModelProto (the
// installed headers do not include its generated message classes).
class ProtoReader {
 public:
  explicit ProtoReader(std::string_view buf) : buf_(buf) {}
  bool done() const { return pos_ >= buf_.size(); }
  // Reads a field key; false on malformed input.
  bool key(uint32_t& field, uint32_t& wire) {
    uint64_t k = 0;
    if (!varint(k)) return false;
    field = static_cast<uint32_t>(k >> 3);
    wire = static_cast<uint32_t>(k & 7);
    return true;
  }
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= buf_.size()) return false;
      const unsigned char b = static_cast<unsigned char>(buf_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  bool bytes(std::string_view& out) {
    uint64_t n = 0;
    if (!varint(n) || n > buf_.size() - pos_) return false;
    out = buf_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  bool skip(uint32_t wire) {
    uint64_t v = 0;
    std::string_view s;
    switch (wire) {
      case 0: return varint(v);
      case 1: return advance(8);
      case 2: return bytes(s);
      case 5: return advance(4);
      default: return false;
    }
  }

 private:
  bool advance(size_t n) {
    if (n > buf_.size() - pos_) return false;
    pos_ += n;
    return true;
  }
  std::string_view buf_;
  size_t pos_ = 0;
};

struct NormalizerFlags {
  bool add_dummy_prefix = true;  // proto defaults
  bool remove_extra_whitespaces = true;
  bool has_rules = false;  // a precompiled map or rule list (matters for the denormalizer)
};

bool read_normalizer(std::string_view msg, NormalizerFlags& f) {
  ProtoReader r(msg);
  while (!r.done()) {
    uint32_t field = 0, wire = 0;
    if (!r.key(field, wire)) return false;
    uint64_t v = 0;
    std::string_view s;
    if ((field == 3 || field == 4) && wire == 0) {
      if (!r.varint(v)) return false;
      (field == 3 ? f.add_dummy_prefix : f.remove_extra_whitespaces) = v != 0;
    } else if ((field == 2 || field == 6) && wire == 2) {
      if (!r.bytes(s)) return false;
      f.has_rules = f.has_rules || !s.empty();
    } else if (!r.skip(wire)) {
      return false;
    }
  }
  return true;
}

}  // namespace

SentencePieceModel::SentencePieceModel() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
SentencePieceModel::~SentencePieceModel() = default;

std::unique_ptr<SentencePieceModel> SentencePieceModel::load(const std::filesystem::path& path) {
  auto m = std::unique_ptr<SentencePieceModel>(new SentencePieceModel());
  m->file_ = path.string();
  if (const auto st = m->sp_->Load(path.string()); !st.ok())
    throw Error(m->file_, cat("cannot load SentencePiece model: ", st.ToString()));
  if (m->sp_->GetPieceSize() <= 0) throw Error(m->file_, "SentencePiece model has no pieces");

  NormalizerFlags norm, denorm;
  const std::string proto = m->sp_->serialized_model_proto();
  ProtoReader r(proto);
  while (!r.done()) {
    uint32_t field = 0, wire = 0;
    std::string_view s;
    bool ok = r.key(field, wire);
    if (ok && (field == 3 || field == 5) && wire == 2) {
      ok = r.bytes(s) && read_normalizer(s, field == 3 ? norm : denorm);
    } else if (ok) {
      ok = r.skip(wire);
    }
    if (!ok) throw Error(m->file_, "malformed SentencePiece model (cannot read its normalizer_spec)");
  }
  // Decoding with denormalization rules would need SentencePiece's charsmap machinery; no released
  // LLM tokenizer uses them.
  if (denorm.has_rules) throw Error(m->file_, "SentencePiece models with a denormalizer_spec are not supported");

  SentencePieceDecodeSpec& spec = m->spec_;
  spec.strip_leading_space = norm.add_dummy_prefix || norm.remove_extra_whitespaces;
  spec.remove_extra_whitespaces = norm.remove_extra_whitespaces;
  const int unk = m->sp_->unk_id();
  if (unk >= 0) {
    spec.unk_piece = m->sp_->IdToPiece(unk);
    spec.unk_surface = m->sp_->DecodeIds({unk});  // the trainer's unk_surface (" \u2047 " by default)
  }
  for (int id = 0; id < m->sp_->GetPieceSize() && !spec.byte_pieces; ++id) spec.byte_pieces = m->sp_->IsByte(id);
  if (const int b = m->sp_->bos_id(); b >= 0) m->bos_ = b;
  if (const int e = m->sp_->eos_id(); e >= 0) m->eos_ = e;
  if (const int p = m->sp_->pad_id(); p >= 0) m->pad_ = p;
  return m;
}

void SentencePieceModel::tokenize(std::string_view piece, std::vector<int32_t>& ids) const {
  std::vector<int> out;
  if (const auto st = sp_->Encode(piece, &out); !st.ok()) throw Error(file_, cat("SentencePiece encode failed: ", st.ToString()));
  ids.insert(ids.end(), out.begin(), out.end());
}

std::optional<int32_t> SentencePieceModel::token_to_id(std::string_view token) const {
  const int id = sp_->PieceToId(token);  // gives the unk id for unknown pieces: check the round trip
  if (id < 0 || id >= sp_->GetPieceSize() || sp_->IdToPiece(id) != token) return std::nullopt;
  return id;
}

const std::string* SentencePieceModel::id_to_token(int32_t id) const {
  if (id < 0 || id >= sp_->GetPieceSize()) return nullptr;
  return &sp_->IdToPiece(id);
}

int64_t SentencePieceModel::vocab_size() const { return sp_->GetPieceSize(); }

bool SentencePieceModel::is_control_or_unknown(int32_t id) const {
  if (id < 0 || id >= sp_->GetPieceSize()) return false;
  return sp_->IsControl(id) || sp_->IsUnknown(id);
}

}  // namespace moerun::tok
