#include "moerun/tensor.h"

#include "moerun/error.h"
#include "util/strings.h"

namespace moerun {

std::string shape_str(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

Tensor::Tensor(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner)
    : dtype_(dtype), shape_(std::move(shape)), data_(data), owner_(std::move(owner)) {
  strides_.resize(shape_.size());
  int64_t stride = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    strides_[i] = stride;
    stride *= shape_[i];
  }
}

int64_t Tensor::numel() const noexcept {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

bool Tensor::is_contiguous() const noexcept {
  int64_t stride = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != stride) return false;
    stride *= shape_[i];
  }
  return true;
}

Tensor Tensor::narrow(int64_t start, int64_t length) const {
  if (shape_.empty() || start < 0 || length < 0 || start + length > shape_[0])
    throw Error("Tensor::narrow", detail::cat("rows [", start, ", ", start + length, ") out of ",
                                              shape_str(shape_)));
  Tensor t = *this;
  t.shape_[0] = length;
  // Block types: a row (strides_[0] elements) is a whole number of blocks, so this is exact.
  t.data_ = static_cast<const char*>(data_) + dtype_bytes(dtype_, start * strides_[0]);
  return t;
}

Tensor Tensor::index(int64_t i) const {
  Tensor t = narrow(i, 1);
  t.shape_.erase(t.shape_.begin());
  t.strides_.erase(t.strides_.begin());
  return t;
}

}  // namespace moerun
