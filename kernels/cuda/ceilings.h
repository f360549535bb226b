#pragma once
// The device's measured ceilings, the denominators of the roofline numbers that gpu-check.sh and
// `moerun bench` report: how fast memory can be streamed and how fast the tensor cores multiply.
// Both run real work on the context's stream for a second or so and synchronise; call them outside
// any graph capture.

namespace moerun::cuda {
class Context;

// Device-to-device copy bandwidth in GB/s (1e9 bytes per second): cudaMemcpyAsync of a 1 GiB buffer
// into another (2 GiB of device memory in all, less when the device has less free), counting the
// bytes read plus the bytes written (2 x 1 GiB per copy), best of several timed copies after a
// warm-up, timed with CUDA events on the stream.
double measure_copy_bandwidth_gbs(Context& ctx);

// Dense bf16 matrix-product rate in TFLOP/s (1e12 per second): cuBLAS GEMM of 8192 x 8192 x 8192
// on random bf16 inputs with fp32 accumulation and fp32 output (the precision of our GEMM path),
// counting 2 * m * n * k operations per product, best of several timed products after warm-ups.
double measure_gemm_tflops(Context& ctx);

}  // namespace moerun::cuda
