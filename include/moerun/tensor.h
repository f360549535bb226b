#pragma once
// Tensor: a non-owning host view (dtype, shape, strides, data pointer) plus a handle that keeps its
// owner (an mmap'd file or a converted buffer) alive; device copies belong to the backend. Copying a
// view is cheap.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moerun/dtype.h"

namespace moerun {

using Shape = std::vector<int64_t>;


std::string shape_str(const Shape& shape);  // "[2048, 768]"; "[]" for a scalar

class Tensor {
 public:
  Tensor() = default;
  // A contiguous row-major view of `data`; `owner` keeps the memory alive.
  Tensor(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner);

  bool defined() const noexcept { return data_ != nullptr; }  // views of empty tensors still point into their file
  explicit operator bool() const noexcept { return defined(); }

  DType dtype() const noexcept { return dtype_; }
  const Shape& shape() const noexcept { return shape_; }
  const Shape& strides() const noexcept { return strides_; }  // in elements
  int rank() const noexcept { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(static_cast<size_t>(i)); }
  int64_t numel() const noexcept;
  size_t nbytes() const noexcept { return dtype_bytes(dtype_, numel()); }  // block types: whole blocks
  bool is_contiguous() const noexcept;

  const void* data() const noexcept { return data_; }
  template <class T>
  const T* data_as() const noexcept { return static_cast<const T*>(data_); }
  const std::shared_ptr<const void>& owner() const noexcept { return owner_; }

  // index(i): the sub-tensor at position i of dimension 0 (rank drops by one), e.g. one expert of a
  // fused [E, 2*I, D] tensor. narrow(start, length): rows [start, start+length) of dimension 0.
  Tensor index(int64_t i) const;
  Tensor narrow(int64_t start, int64_t length) const;

 private:
  DType dtype_ = DType::f32;
  Shape shape_;
  Shape strides_;
  const void* data_ = nullptr;
  std::shared_ptr<const void> owner_;
};

}  // namespace moerun
