// fr_lm_head_topk microbenchmark: time of the fused FR-Spec head against its floor,
// the weight bytes over the device-to-device copy bandwidth measured in the same run.
// Usage: lm_head_topk_bench [--quick | --profile]
//   --quick: tiny shapes for compute-sanitizer; --profile: Llama-3-8B K=32768 only, n = 1
//   and 10, three runs each (for ncu).
#include <cstdio>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "frspec/ops.h"

__global__ void iota_kernel(int32_t* p, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = static_cast<int32_t>(i);
}

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool quick = mode == "--quick", profile = mode == "--profile";
  cudaDeviceProp prop;
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_gbs = bench::copy_bandwidth_gbs(quick ? (1 << 20) : (size_t(1) << 30));
  std::printf("device: %s, copy bandwidth (read+write): %.0f GB/s\n", prop.name, copy_gbs);
  std::printf("%6s %7s %4s %4s %10s %10s %8s\n", "H", "K", "n", "k", "time_us", "floor_us", "x_floor");
  struct Shape { int64_t H, K; };
  const std::vector<Shape> shapes = quick     ? std::vector<Shape>{{64, 300}, {4096, 1000}}
                                    : profile ? std::vector<Shape>{{4096, 32768}}
                                              : std::vector<Shape>{{4096, 32768}, {4096, 128256},
                                                                   {2048, 16384}, {3584, 152064}};
  const std::vector<int64_t> ns = quick     ? std::vector<int64_t>{1, 9, 64}
                                  : profile ? std::vector<int64_t>{1, 10}
                                            : std::vector<int64_t>{1, 10, 60};
  for (const Shape& s : shapes) {
    __nv_bfloat16 *hidden, *weight;
    int32_t* ids;
    int64_t* token_ids;
    float* logprobs;
    void* ws;
    BENCH_CHECK(cudaMalloc(&hidden, 64 * s.H * 2));
    BENCH_CHECK(cudaMalloc(&weight, s.K * s.H * 2));
    BENCH_CHECK(cudaMalloc(&ids, s.K * 4));
    BENCH_CHECK(cudaMalloc(&token_ids, 64 * 64 * 8));
    BENCH_CHECK(cudaMalloc(&logprobs, 64 * 64 * 4));
    BENCH_CHECK(cudaMalloc(&ws, frspec::fr_lm_head_topk_workspace_bytes(64, s.K, 64)));
    bench::fill_uniform(hidden, 64 * s.H, -1.f, 1.f, 7);
    bench::fill_uniform(weight, s.K * s.H, -0.03f, 0.03f, 8);
    iota_kernel<<<256, 256>>>(ids, s.K);
    const double floor_us = s.K * s.H * 2.0 / (copy_gbs * 1e3);
    for (int64_t n : ns) {
      const int64_t k = 10;
      const double us = bench::time_us(
          [&](int) {
            BENCH_CHECK(frspec::fr_lm_head_topk(hidden, weight, ids, n, s.H, s.K, k,
                                                frspec::DType::kBFloat16, ws, token_ids,
                                                logprobs, 0));
          },
          quick || profile ? 1 : 10, quick || profile ? 2 : 50);
      std::printf("%6lld %7lld %4lld %4lld %10.1f %10.1f %8.2f\n", (long long)s.H, (long long)s.K,
                  (long long)n, (long long)k, us, floor_us, us / floor_us);
    }
    cudaFree(hidden); cudaFree(weight); cudaFree(ids); cudaFree(token_ids); cudaFree(logprobs); cudaFree(ws);
  }
  return 0;
}
