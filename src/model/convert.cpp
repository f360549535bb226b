#include "model/convert.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <vector>

#include "io/mapped_file.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/ops.h"
#include "moerun/error.h"
#include "util/strings.h"

namespace moerun::model {
namespace {

using detail::cat;

// --- Owned tensors, allocated by the walk and filled afterwards ----------------------------------

// A new owned tensor of `dtype` and `shape`, its bytes not yet written (`*out` is where they go).
// Allocation is separate from filling so the walk can hand out the tensor at once (a tied head
// shares the embedding's buffer) while the filling runs later on all threads. Plain heap memory:
// 2 MiB-aligned MADV_HUGEPAGE slabs were tried, and a --quant q8 load of 7.9 GB took 15.3 s of
// CPU instead of 8.8 s, the kernel compacting memory on the faults (8.9 s of system time, not 2.2).
Tensor allocate(DType dtype, const Shape& shape, std::byte** out) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  auto buf = std::shared_ptr<std::byte[]>(new std::byte[dtype_bytes(dtype, n) + 1]);
  *out = buf.get();
  return Tensor(dtype, shape, buf.get(), std::shared_ptr<const void>(buf, buf.get()));
}

bool aligned(const Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data()) % dtype_size(t.dtype()) == 0;
}

// The dtypes a conversion reads element by element (cpu::load_f32); others are an Error before any work.
void check_readable(const Tensor& t) {
  const DType d = t.dtype();
  if (d != DType::f32 && d != DType::bf16 && d != DType::f16)
    throw Error("convert", cat("cannot read ", dtype_name(d), " as a number"));
}

// cpu::f32_to_bf16 (round to nearest even, NaN kept NaN), inline here so the row loop below
// vectorizes; the loader's bf16 must be bit-identical to the kernels' conversion.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t rounded = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return (u & 0x7fffffffu) > 0x7f800000u ? static_cast<uint16_t>((u >> 16) | 0x40u) : rounded;
}

// --- Row kernels: each writes one row (or a range of elements) of a conversion ------------------

// Row r of an FP8 [rows, cols] matrix as fp32: W[r, j] = fp8(Q[r, j]) * S[r / block_out, j / block_in],
// the product in fp32 (docs/MODELS.md §6).
void fp8_row(const uint8_t* q, const Tensor& s, int64_t r, int64_t cols, int64_t block_out, int64_t block_in, float* out) {
  const float* lut = cpu::f8_e4m3_values();
  const int64_t scale_row = (r / block_out) * s.dim(1);
  for (int64_t j0 = 0; j0 < cols; j0 += block_in) {
    const float scale = cpu::load_f32(s.data(), s.dtype(), scale_row + j0 / block_in);
    const int64_t j1 = std::min(cols, j0 + block_in);
    for (int64_t j = j0; j < j1; ++j) out[j] = lut[q[j]] * scale;
  }
}

// n elements of f32 / bf16 / f16 from `src` (any alignment) as fp32.
void decode_f32(const std::byte* src, DType dtype, int64_t n, float* out) {
  switch (dtype) {
    case DType::f32:
      std::memcpy(out, src, static_cast<size_t>(n) * 4);
      break;
    case DType::bf16:
      for (int64_t i = 0; i < n; ++i) {  // vectorizes: a bf16 is the top half of its fp32
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        const uint32_t u = static_cast<uint32_t>(h) << 16;
        std::memcpy(out + i, &u, 4);
      }
      break;
    default:  // f16 (check_readable let nothing else through): norms and biases, never large
      for (int64_t i = 0; i < n; ++i) out[i] = cpu::load_f32(src, DType::f16, i);
      break;
  }
}

void store_bf16(const float* in, int64_t n, std::byte* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = to_bf16(in[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

// --- Jobs ----------------------------------------------------------------------------------------

enum class Op : uint8_t {
  copy,      // the same bytes at an aligned address; units are bytes
  to_f32,    // f32 / bf16 / f16 elements as f32; units are elements
  fp8,       // FP8 [rows, cols] with block scales dequantized to bf16 or f32; units are rows
  quantize,  // any readable float dtype (FP8 with its scales) [rows, cols] as q8_0 / q4_0 rows
};

// One owned tensor to fill: `units` independent pieces (rows, elements or bytes) that any thread
// may write in any order.
struct Job {
  Op op = Op::copy;
  Tensor src, scale;  // the source view; FP8 block scales for fp8 (and quantize of FP8)
  DType to = DType::f32;
  std::byte* out = nullptr;
  int64_t units = 0, cols = 1;
  int64_t block_out = 128, block_in = 128;
  uint64_t src_bytes = 0;
};

// The conversions a walk asks for, in walk order (which is how they are run).
struct Batch {
  std::vector<Job> jobs;
};

// Fills units [u0, u1) of `j`; `row` is scratch for one row of fp32 (cols floats). Never throws:
// every check happened when the job was made.
void run_units(const Job& j, int64_t u0, int64_t u1, float* row) {
  const auto* src = static_cast<const std::byte*>(j.src.data());
  switch (j.op) {
    case Op::copy:
      std::memcpy(j.out + u0, src + u0, static_cast<size_t>(u1 - u0));
      break;
    case Op::to_f32: {
      const size_t es = dtype_size(j.src.dtype());
      decode_f32(src + static_cast<size_t>(u0) * es, j.src.dtype(), u1 - u0, reinterpret_cast<float*>(j.out) + u0);
      break;
    }
    case Op::fp8:
      for (int64_t r = u0; r < u1; ++r) {
        const auto* q = reinterpret_cast<const uint8_t*>(src) + r * j.cols;
        if (j.to == DType::f32) {
          fp8_row(q, j.scale, r, j.cols, j.block_out, j.block_in, reinterpret_cast<float*>(j.out) + r * j.cols);
        } else {
          fp8_row(q, j.scale, r, j.cols, j.block_out, j.block_in, row);
          store_bf16(row, j.cols, j.out + 2 * r * j.cols);
        }
      }
      break;
    case Op::quantize: {
      // Row by row through a row of fp32, never the whole dequantized matrix: the row stays in cache
      // between decoding and quantizing, and FP8 costs no f32 copy of the matrix.
      const size_t row_bytes = dtype_bytes(j.to, j.cols);
      const size_t src_row = dtype_bytes(j.src.dtype(), j.cols);
      for (int64_t r = u0; r < u1; ++r) {
        const std::byte* s = src + static_cast<size_t>(r) * src_row;
        if (j.src.dtype() == DType::f8_e4m3)
          fp8_row(reinterpret_cast<const uint8_t*>(s), j.scale, r, j.cols, j.block_out, j.block_in, row);
        else
          decode_f32(s, j.src.dtype(), j.cols, row);
        cpu::quantize_row(j.to, row, j.cols, j.out + static_cast<size_t>(r) * row_bytes);
      }
      break;
    }
  }
}

void check_fp8(const Tensor& q, const Tensor& s, int64_t block_out, int64_t block_in) {
  if (q.rank() != 2) throw Error("convert", cat("an FP8 weight must be [out, in], got ", shape_str(q.shape())));
  if (block_out <= 0 || block_in <= 0) throw Error("convert", "FP8 block sizes must be positive");
  const int64_t need_r = (q.dim(0) + block_out - 1) / block_out, need_c = (q.dim(1) + block_in - 1) / block_in;
  if (!s || s.rank() != 2 || s.dim(0) < need_r || s.dim(1) < need_c)
    throw Error("convert", cat("FP8 weight ", shape_str(q.shape()), " needs block scales of at least [", need_r, ", ",
                               need_c, "], got ", s ? shape_str(s.shape()) : std::string("none")));
  check_readable(s);
}

Job matrix_job(Op op, const Tensor& w, const Tensor& s, int64_t block_out, int64_t block_in, DType to) {
  Job j;
  j.op = op;
  j.src = w;
  j.scale = s;
  j.to = to;
  j.units = w.dim(0);
  j.cols = w.dim(1);
  j.block_out = block_out;
  j.block_in = block_in;
  j.src_bytes = w.nbytes();
  return j;
}

// The jobs, then their tensors: each make_* checks its input (throwing before any work starts)
// and returns the owned tensor the job will fill.
Tensor make_copy(Batch& batch, const Tensor& t) {
  Job j;
  j.op = Op::copy;
  j.src = t;
  j.to = t.dtype();
  Tensor dst = allocate(t.dtype(), t.shape(), &j.out);
  j.units = static_cast<int64_t>(t.nbytes());
  j.src_bytes = t.nbytes();
  batch.jobs.push_back(std::move(j));
  return dst;
}

Tensor make_to_f32(Batch& batch, const Tensor& t) {
  if (!t) return t;
  check_readable(t);
  Job j;
  j.op = Op::to_f32;
  j.src = t;
  Tensor dst = allocate(DType::f32, t.shape(), &j.out);
  j.units = t.numel();
  j.src_bytes = t.nbytes();
  batch.jobs.push_back(std::move(j));
  return dst;
}

Tensor make_fp8(Batch& batch, const Tensor& q, const Tensor& s, int64_t block_out, int64_t block_in, DType to) {
  if (to != DType::bf16 && to != DType::f32) throw Error("dequantize_fp8", "target dtype must be BF16 or F32");
  check_fp8(q, s, block_out, block_in);
  Job j = matrix_job(Op::fp8, q, s, block_out, block_in, to);
  Tensor dst = allocate(to, q.shape(), &j.out);
  batch.jobs.push_back(std::move(j));
  return dst;
}

Tensor make_quantize(Batch& batch, const Tensor& w, const Tensor& s, int64_t block_out, int64_t block_in, DType to) {
  if (to != DType::q8_0 && to != DType::q4_0) throw Error("quantize_matrix", "target dtype must be Q8_0 or Q4_0");
  if (w.rank() != 2 || w.dim(1) % cpu::kQuantBlock != 0)
    throw Error("quantize_matrix", cat("need [out, in] with in a multiple of 32, got ", shape_str(w.shape())));
  if (w.dtype() == DType::f8_e4m3) check_fp8(w, s, block_out, block_in);
  else check_readable(w);
  Job j = matrix_job(Op::quantize, w, s, block_out, block_in, to);
  Tensor dst = allocate(to, w.shape(), &j.out);
  batch.jobs.push_back(std::move(j));
  return dst;
}

// --- Running the jobs ----------------------------------------------------------------------------

// About 1 MiB of source per piece: a millisecond or so of work, small enough that two threads
// share even one matrix and finish together, large enough that claiming a piece costs nothing.
constexpr uint64_t kPieceBytes = uint64_t{1} << 20;
// Source read ahead of the pieces being converted (madvise WILLNEED), so a cold page cache is read
// by the disk in large requests while the CPUs convert, instead of one fault at a time.
constexpr uint64_t kReadAheadBytes = uint64_t{64} << 20;

struct Piece {
  uint32_t job;
  int64_t u0, u1;
  uint64_t bytes;
};

// The source bytes units [u0, u1) of `j` read.
std::span<const std::byte> piece_source(const Job& j, int64_t u0, int64_t u1) {
  const uint64_t per_unit = j.src_bytes / static_cast<uint64_t>(std::max<int64_t>(j.units, 1));
  return {static_cast<const std::byte*>(j.src.data()) + static_cast<uint64_t>(u0) * per_unit,
          static_cast<size_t>(static_cast<uint64_t>(u1 - u0) * per_unit)};
}

void run_jobs(const Batch& batch, cpu::ThreadPool* pool, const LoadProgress& progress) {
  const std::vector<Job>& jobs = batch.jobs;
  constexpr std::string_view kStage = "converting weights";
  std::vector<Piece> pieces;
  uint64_t total = 0;
  int64_t max_cols = 1;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& j = jobs[i];
    if (j.units <= 0) continue;
    const uint64_t per_unit = std::max<uint64_t>(j.src_bytes / static_cast<uint64_t>(j.units), 1);
    const int64_t step = static_cast<int64_t>(std::max<uint64_t>(kPieceBytes / per_unit, 1));
    for (int64_t u = 0; u < j.units; u += step) {
      const int64_t e = std::min(j.units, u + step);
      pieces.push_back({static_cast<uint32_t>(i), u, e, static_cast<uint64_t>(e - u) * per_unit});
    }
    total += j.src_bytes;
    max_cols = std::max(max_cols, j.cols);
  }
  if (pieces.empty()) {
    if (progress) progress(kStage, total, total);
    return;
  }

  const int threads = pool ? pool->size() : 1;
  std::vector<std::vector<float>> rows(static_cast<size_t>(threads), std::vector<float>(static_cast<size_t>(max_cols)));
  // madvise(WILLNEED) the source of pieces [first, first + kWindow), adjacent pieces merged into one
  // call (a job's pieces are contiguous, and so are the tensors of a shard, mostly).
  constexpr size_t kWindow = kReadAheadBytes / kPieceBytes;
  auto read_ahead = [&](size_t first) {
    std::span<const std::byte> run;
    for (size_t a = first; a < std::min(pieces.size(), first + kWindow); ++a) {
      const auto s = piece_source(jobs[pieces[a].job], pieces[a].u0, pieces[a].u1);
      if (!run.empty() && run.data() + run.size() == s.data()) {
        run = {run.data(), run.size() + s.size()};
        continue;
      }
      if (!run.empty()) io::advise(run, io::Advice::willneed);
      run = s;
    }
    if (!run.empty()) io::advise(run, io::Advice::willneed);
  };
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> done{0};
  std::atomic<bool> stop{false};
  std::exception_ptr failure;  // from `progress` (worker 0 only): stops the others, rethrown below
  uint64_t report_at = 0;
  const uint64_t report_step = std::max<uint64_t>(total / 100, 1);
  // Each thread claims pieces in order until none are left; the caller (worker 0) also reports.
  // Pieces in order keep the reads of the mapped files nearly sequential across the threads.
  auto drain = [&](int64_t, int64_t, int worker) {
    float* row = rows[static_cast<size_t>(worker)].data();
    for (;;) {
      if (stop.load(std::memory_order_relaxed)) return;
      const size_t k = next.fetch_add(1, std::memory_order_relaxed);
      if (k >= pieces.size()) return;
      // The source one window ahead is asked for when a piece starts a window, so the disk reads
      // the next window while this one is converted, and the madvise calls stay few.
      if (k % kWindow == 0) read_ahead(k + kWindow);
      const Piece& p = pieces[k];
      run_units(jobs[p.job], p.u0, p.u1, row);
      const uint64_t d = done.fetch_add(p.bytes, std::memory_order_relaxed) + p.bytes;
      if (worker == 0 && progress && d >= report_at) {
        report_at = d + report_step;
        try {
          progress(kStage, d, total);
        } catch (...) {
          failure = std::current_exception();
          stop.store(true);
          return;
        }
      }
    }
  };
  read_ahead(0);  // the first window before any piece is converted
  if (pool && threads > 1) pool->parallel_for(threads, drain);
  else drain(0, 1, 0);
  if (failure) std::rethrow_exception(failure);
  if (progress) progress(kStage, total, total);
}

// Runs one job on the calling thread (the single-tensor entry points below).
Tensor run_one(const Batch& batch, Tensor t) {
  run_jobs(batch, nullptr, {});
  return t;
}

}  // namespace

Tensor dequantize_fp8(const Tensor& q, const Tensor& s, int64_t block_out, int64_t block_in, DType to) {
  Batch batch;
  Tensor t = make_fp8(batch, q, s, block_out, block_in, to);
  return run_one(batch, std::move(t));
}

Tensor quantize_matrix(const Tensor& w, const Tensor& scale_inv, int64_t block_out, int64_t block_in, DType to) {
  Batch batch;
  Tensor t = make_quantize(batch, w, scale_inv, block_out, block_in, to);
  return run_one(batch, std::move(t));
}

PreparedForm prepared_form(const WeightSite& site, LinearPart part, const Tensor& t, const PrepareOptions& o,
                           const Tensor& weight) {
  const DType dt = t.dtype();
  const bool misaligned = t.defined() && !aligned(t);
  if (part == LinearPart::scale) {
    // Kept for FP8 weights the kernels read as they are; folded into a converted (dequantized or
    // quantized) weight otherwise.
    if (prepared_form(site, LinearPart::weight, weight, o).dtype != DType::f8_e4m3)
      return {.dtype = dt, .owned = false, .kept = false};
    return {.dtype = DType::f32, .owned = dt != DType::f32 || misaligned};
  }
  if (part == LinearPart::bias || site.f32_at_run_time) return {.dtype = DType::f32, .owned = true};
  if (site.kind == WeightKind::linear) {
    // A routed expert's three matrices share one dtype (the moe op takes one): quantized only when
    // both dimensions are whole blocks, so gate/up [I, D] and down [D, I] decide alike (a rank's
    // slice of a tensor-parallel expert may leave I off the blocks).
    const bool quantize = o.quant != WeightQuant::none && !site.per_head && t.rank() == 2 &&
                          t.dim(1) % cpu::kQuantBlock == 0 && (!site.routed() || t.dim(0) % cpu::kQuantBlock == 0) &&
                          is_float(dt);
    if (quantize) return {.dtype = o.quant == WeightQuant::q8 ? DType::q8_0 : DType::q4_0, .owned = true};
    if (dt == DType::f8_e4m3) return {.dtype = o.fp8_to, .owned = o.fp8_to != DType::f8_e4m3};
  }
  return {.dtype = dt, .owned = misaligned};  // a view of the mapped file unless misaligned
}

namespace {

// The prepared form of one tensor: the view itself, or an owned tensor whose filling is added to
// `batch` (run by prepare_weights once the walk is done).
Tensor prepare_tensor(Batch& batch, const WeightSite& site, LinearPart part, const Tensor& t, const Tensor& scale,
                      const ModelDesc& d, const PrepareOptions& o, const Tensor& weight = {}) {
  const PreparedForm f = prepared_form(site, part, t, o, weight);
  if (!f.owned) return t;
  if (part == LinearPart::scale) return make_to_f32(batch, t);
  if (is_block(f.dtype)) return make_quantize(batch, t, scale, d.fp8.block_out, d.fp8.block_in, f.dtype);
  if (t.dtype() == DType::f8_e4m3) return make_fp8(batch, t, scale, d.fp8.block_out, d.fp8.block_in, f.dtype);
  if (f.dtype == DType::f32) return make_to_f32(batch, t);
  return make_copy(batch, t);  // an aligned copy
}

}  // namespace

ModelWeights prepare_weights(const ModelWeights& w, const ModelDesc& d, const PrepareOptions& o, cpu::ThreadPool* pool,
                             const LoadProgress& progress) {
  // The walk decides every tensor's form and allocates the owned ones (so any check fails before
  // work starts); the conversions then run on all threads.
  Batch batch;
  ModelWeights out = w;  // views; the walk replaces each tensor by its prepared form
  const void* embedding = w.embed_tokens.data();
  for_each_weight(out, [&](const WeightSite& site, auto& x) {
    if constexpr (std::is_same_v<std::remove_reference_t<decltype(x)>, LinearWeight>) {
      const Tensor scale = x.weight_scale_inv, weight = x.weight;
      x.weight = prepare_tensor(batch, site, LinearPart::weight, weight, scale, d, o);
      // Kept (as f32) with a weight that stays FP8; folded into a dequantized or quantized one.
      if (x.weight.dtype() == DType::f8_e4m3)
        x.weight_scale_inv = prepare_tensor(batch, site, LinearPart::scale, scale, {}, d, o, weight);
      else
        x.weight_scale_inv = Tensor();
      if (x.bias) x.bias = prepare_tensor(batch, site, LinearPart::bias, x.bias, {}, d, o);
    } else if (site.kind == WeightKind::linear && x.data() == embedding && x.shape() == w.embed_tokens.shape()) {
      // (A rank's rows of a vocabulary-split tied head are a view of the table's first rows: not tied.)
      // A tied LM head shares the prepared embedding, except under quantization: the head is the
      // largest matrix a decode step reads, so it gets its own quantized copy while lookups keep the
      // exact table.
      x = o.quant == WeightQuant::none ? out.embed_tokens : prepare_tensor(batch, site, LinearPart::weight, x, {}, d, o);
    } else {
      x = prepare_tensor(batch, site, site.kind == WeightKind::linear ? LinearPart::weight : LinearPart::whole, x, {}, d, o);
    }
  });
  run_jobs(batch, pool, progress);
  return out;
}

void lock_weights(const ModelWeights& w) {
  // Page ranges of every tensor, merged: a few large mlock calls instead of thousands, and a
  // tensor seen twice (a tied head) or two tensors on one page are locked once.
  std::vector<std::span<const std::byte>> ranges;
  for_each_tensor(w, [&](const WeightSite&, LinearPart, const Tensor& t) {
    if (t && t.nbytes() > 0) ranges.emplace_back(static_cast<const std::byte*>(t.data()), t.nbytes());
  });
  io::lock_ranges(std::move(ranges), "the weights");
}

}  // namespace moerun::model
