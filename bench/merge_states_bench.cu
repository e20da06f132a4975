// merge_attention_states microbenchmark: GB/s moved (out_a, out_b, lse_a, lse_b read;
// out, lse written) against the device-to-device copy bandwidth measured in the same run.
// Usage: merge_states_bench [--quick]   (32 heads x 128 dims, bf16)
// --quick: small sizes, few repeats (for compute-sanitizer runs).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "frspec/ops.h"

int main(int argc, char** argv) {
  const int64_t heads = 32, head_dim = 128;
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  cudaDeviceProp prop;
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copy_gbs = bench::copy_bandwidth_gbs(quick ? (1 << 20) : (size_t(1) << 30));
  std::printf("device: %s, copy bandwidth (read+write): %.0f GB/s\n", prop.name, copy_gbs);
  std::printf("%8s %6s %5s %10s %10s %8s\n", "tokens", "heads", "dim", "time_us", "GB/s",
              "of_copy");
  const std::vector<int64_t> token_counts =
      quick ? std::vector<int64_t>{1, 7} : std::vector<int64_t>{1, 60, 1024, 8192, 32768};
  for (int64_t tokens : token_counts) {
    const int64_t rows = tokens * heads, n = rows * head_dim;
    // Rotate over enough input sets to stay out of the 50 MB L2 for the small sizes.
    const int sets = quick ? 1 : static_cast<int>(std::min<int64_t>(64, 1 + (256ll << 20) / (6 * n + 16 * rows)));
    std::vector<__nv_bfloat16*> oa(sets), ob(sets), o(sets);
    std::vector<float*> la(sets), lb(sets), l(sets);
    for (int s = 0; s < sets; ++s) {
      BENCH_CHECK(cudaMalloc(&oa[s], n * 2));
      BENCH_CHECK(cudaMalloc(&ob[s], n * 2));
      BENCH_CHECK(cudaMalloc(&o[s], n * 2));
      BENCH_CHECK(cudaMalloc(&la[s], rows * 4));
      BENCH_CHECK(cudaMalloc(&lb[s], rows * 4));
      BENCH_CHECK(cudaMalloc(&l[s], rows * 4));
      bench::fill_uniform(oa[s], n, -1.f, 1.f, 1 + s);
      bench::fill_uniform(ob[s], n, -1.f, 1.f, 1000 + s);
      bench::fill_uniform(la[s], rows, -4.f, 4.f, 2000 + s);
      bench::fill_uniform(lb[s], rows, -4.f, 4.f, 3000 + s);
    }
    const double us = bench::time_us(
        [&](int i) {
      const int s = i % sets;
      BENCH_CHECK(frspec::merge_attention_states(oa[s], la[s], ob[s], lb[s], o[s], l[s], rows,
                                                 head_dim, frspec::DType::kBFloat16, 0));
        },
        quick ? 1 : 10, quick ? 2 : 100);
    const double bytes = 3.0 * n * 2 + 3.0 * rows * 4;
    const double gbs = bytes / (us * 1e3);
    std::printf("%8lld %6lld %5lld %10.2f %10.0f %7.1f%%\n", (long long)tokens,
                (long long)heads, (long long)head_dim, us, gbs, 100.0 * gbs / copy_gbs);
    for (int s = 0; s < sets; ++s) {
      cudaFree(oa[s]); cudaFree(ob[s]); cudaFree(o[s]);
      cudaFree(la[s]); cudaFree(lb[s]); cudaFree(l[s]);
    }
  }
  return 0;
}
