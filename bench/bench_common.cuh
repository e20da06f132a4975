// Shared scaffolding of the bench/ executables: checked CUDA calls, deterministic
// random fills, event timing (median of repeats) and the copy-bandwidth ceiling.
// Bench executables link frspec_kernels only: no torch.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "frspec/common.cuh"

#define BENCH_CHECK(expr)                                                                  \
  do {                                                                                     \
    cudaError_t e_ = (expr);                                                               \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr,            \
                   cudaGetErrorString(e_));                                                \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

namespace bench {

__device__ __forceinline__ float hash_uniform(uint64_t i, uint64_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<float>(x >> 40) * (1.0f / 16777216.0f);  // [0, 1)
}

// Uniform in [lo, hi): never zeros, so the timings see real data.
template <typename T>
__global__ void fill_uniform_kernel(T* p, int64_t n, float lo, float hi, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    p[i] = frspec::from_float<T>(lo + (hi - lo) * hash_uniform(i, seed));
}

template <typename T>
void fill_uniform(T* p, int64_t n, float lo, float hi, uint64_t seed) {
  fill_uniform_kernel<<<1024, 256>>>(p, n, lo, hi, seed);
  BENCH_CHECK(cudaGetLastError());
}

// Median time in microseconds of `fn` over `reps` runs after `warmup` runs.
inline double time_us(const std::function<void(int)>& fn, int warmup = 10, int reps = 100) {
  for (int i = 0; i < warmup; ++i) fn(i);
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  std::vector<float> ms(reps);
  for (int i = 0; i < reps; ++i) {
    BENCH_CHECK(cudaEventRecord(start));
    fn(i);
    BENCH_CHECK(cudaEventRecord(stop));
    BENCH_CHECK(cudaEventSynchronize(stop));
    BENCH_CHECK(cudaEventElapsedTime(&ms[i], start, stop));
  }
  BENCH_CHECK(cudaGetLastError());
  BENCH_CHECK(cudaEventDestroy(start));
  BENCH_CHECK(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  return 1000.0 * ms[reps / 2];
}

// Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written.
inline double copy_bandwidth_gbs(size_t bytes = size_t(1) << 30) {
  void *src, *dst;
  BENCH_CHECK(cudaMalloc(&src, bytes));
  BENCH_CHECK(cudaMalloc(&dst, bytes));
  BENCH_CHECK(cudaMemset(src, 1, bytes));
  const double us = time_us([&](int) { BENCH_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)); }, 3, 20);
  BENCH_CHECK(cudaFree(src));
  BENCH_CHECK(cudaFree(dst));
  return 2.0 * bytes / (us * 1e3);
}

}  // namespace bench
