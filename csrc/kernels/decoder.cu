// Instantiations and launchers of the fused decoder-layer pieces (see frspec/decoder.cuh).
#include "frspec/decoder.cuh"
#include "frspec/ops.h"

#include <algorithm>
#include <atomic>

namespace frspec {
namespace {

template <typename T>
cudaError_t launch_rms_norm(const void* x, const void* residual, const void* weight, void* out, void* sum_out,
                            int64_t rows, int64_t H, float eps, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = H % kVec == 0 && is_aligned(x, 16) && is_aligned(weight, 16) && is_aligned(out, 16) &&
                   (!residual || (is_aligned(residual, 16) && is_aligned(sum_out, 16)));
  const int per_thread = vec ? kVec : 1;
  // one access per thread where the row allows (latency: a decode step has one row), a
  // multiple of 32 threads, at most 1024
  const int block = static_cast<int>(std::min<int64_t>(1024, ceil_div(ceil_div(H, per_thread), 32) * 32));
  auto run = [&](auto kernel) {
    return launch_kernel(kernel, dim3(static_cast<unsigned>(rows)), dim3(block), 0, stream, static_cast<const T*>(x),
                         static_cast<const T*>(residual), static_cast<const T*>(weight), static_cast<T*>(out),
                         static_cast<T*>(sum_out), static_cast<int>(H), eps);
  };
  return vec ? run(rms_norm_kernel<T, kVec>) : run(rms_norm_kernel<T, 1>);
}

template <typename T>
cudaError_t launch_silu_and_mul(const void* gate_up, void* out, int64_t rows, int64_t I, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = I % kVec == 0 && is_aligned(gate_up, 16) && is_aligned(out, 16);
  const int64_t work = rows * (vec ? I / kVec : I);
  const int threads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(work, threads), 132 * 16));
  auto run = [&](auto kernel) {
    return launch_kernel(kernel, dim3(blocks), dim3(threads), 0, stream, static_cast<const T*>(gate_up),
                         static_cast<T*>(out), rows, static_cast<int>(I));
  };
  return vec ? run(silu_and_mul_kernel<T, kVec>) : run(silu_and_mul_kernel<T, 1>);
}

template <typename T>
cudaError_t launch_rope(const void* qkv, const int64_t* positions, const float* inv_freq, const int64_t* slots,
                        void* q_out, void* k_cache, void* v_cache, int64_t B, int64_t T_len, int64_t Hq, int64_t Hkv,
                        int64_t D, int64_t L, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(B * T_len), static_cast<unsigned>(Hq + 2 * Hkv));
  return launch_kernel(rope_qk_store_kv_kernel<T>, grid, dim3(static_cast<unsigned>(D / 2)), 0, stream,
                       static_cast<const T*>(qkv), positions, inv_freq, slots, static_cast<T*>(q_out),
                       static_cast<T*>(k_cache), static_cast<T*>(v_cache), static_cast<int>(T_len),
                       static_cast<int>(Hq), static_cast<int>(Hkv), static_cast<int>(D), L);
}

std::atomic<int64_t>& gemv_l2_prefetch_budget() {
  // Off by default: on an H200 it made the decode step slower (220.0 -> 212.4 tok/s, o-proj
  // GEMV 11.5 -> 13.1 us; bench/NOTES.md). Kept as a measured option.
  static std::atomic<int64_t> bytes{0};
  return bytes;
}

template <typename T, bool kSiluMul>
cudaError_t launch_gemv(const void* x, const void* w, const void* bias, void* y, int64_t N, int64_t K,
                        const GemvNorm* norm, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kGemvWarps))), block(kGemvWarps * 32);
  // the same number of leading bytes of every weight row, all rows together within the budget
  const int64_t rows = kSiluMul ? 2 * N : N, row_bytes = K * static_cast<int64_t>(sizeof(T));
  const unsigned prefetch =
      static_cast<unsigned>(std::min(row_bytes, gemv_l2_prefetch_budget().load(std::memory_order_relaxed) / rows) /
                            16 * 16);
  if (norm)
    return launch_kernel(gemv_kernel<T, kSiluMul, true>, grid, block, static_cast<size_t>(K) * sizeof(T), stream,
                         static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias),
                         static_cast<T*>(y), static_cast<int>(N), static_cast<int>(K), *norm, prefetch);
  return launch_kernel(gemv_kernel<T, kSiluMul, false>, grid, block, 0, stream, static_cast<const T*>(x),
                       static_cast<const T*>(w), static_cast<const T*>(bias), static_cast<T*>(y), static_cast<int>(N),
                       static_cast<int>(K), GemvNorm{}, prefetch);
}

}  // namespace

cudaError_t rms_norm(const void* x, const void* residual, const void* weight, void* out, void* sum_out,
                     int64_t rows, int64_t H, float eps, DType dtype, cudaStream_t stream) {
  if (rows < 0 || H <= 0 || H > (1 << 24) || rows > 0x7fffffff || (residual && !sum_out))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return dtype == DType::kBFloat16
             ? launch_rms_norm<__nv_bfloat16>(x, residual, weight, out, sum_out, rows, H, eps, stream)
             : launch_rms_norm<__half>(x, residual, weight, out, sum_out, rows, H, eps, stream);
}

cudaError_t silu_and_mul(const void* gate_up, void* out, int64_t rows, int64_t I, DType dtype, cudaStream_t stream) {
  if (rows < 0 || I <= 0 || I > (1 << 28)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return dtype == DType::kBFloat16 ? launch_silu_and_mul<__nv_bfloat16>(gate_up, out, rows, I, stream)
                                   : launch_silu_and_mul<__half>(gate_up, out, rows, I, stream);
}

cudaError_t rope_qk_store_kv(const void* qkv, const int64_t* positions, const float* inv_freq, const int64_t* slots,
                             void* q_out, void* k_cache, void* v_cache, int64_t B, int64_t T, int64_t Hq,
                             int64_t Hkv, int64_t D, int64_t L, DType dtype, cudaStream_t stream) {
  if (B < 0 || T < 0 || Hq <= 0 || Hkv <= 0 || D < 2 || D % 2 || D > 2048 || Hq + 2 * Hkv > 65535 ||
      B * T > 0x7fffffff || L <= 0)
    return cudaErrorInvalidValue;
  if (B * T == 0) return cudaSuccess;
  return dtype == DType::kBFloat16
             ? launch_rope<__nv_bfloat16>(qkv, positions, inv_freq, slots, q_out, k_cache, v_cache, B, T, Hq, Hkv, D,
                                          L, stream)
             : launch_rope<__half>(qkv, positions, inv_freq, slots, q_out, k_cache, v_cache, B, T, Hq, Hkv, D, L,
                                   stream);
}

int64_t set_gemv_l2_prefetch_bytes(int64_t budget) {
  return gemv_l2_prefetch_budget().exchange(std::max<int64_t>(0, budget));
}

cudaError_t gemv(const void* x, const void* weight, const void* bias, void* y, int64_t N, int64_t K, DType dtype,
                 cudaStream_t stream, const GemvNormArgs* norm, bool silu_and_mul) {
  if (N <= 0 || K <= 0 || K % 8 || (silu_and_mul ? 2 * N : N) > 0x7fffffff || K > 0x7fffffff ||
      (silu_and_mul && bias))
    return cudaErrorInvalidValue;
  if (!is_aligned(x, 16) || !is_aligned(weight, 16)) return cudaErrorMisalignedAddress;
  GemvNorm fused{};
  if (norm) {
    if (K > kGemvNormMaxK || !norm->weight || (norm->residual && !norm->sum_out)) return cudaErrorInvalidValue;
    if (!is_aligned(norm->weight, 16) || (norm->residual && (!is_aligned(norm->residual, 16) ||
                                                             !is_aligned(norm->sum_out, 16))))
      return cudaErrorMisalignedAddress;
    fused = GemvNorm{norm->residual, norm->weight, norm->sum_out, norm->eps};
  }
  const GemvNorm* f = norm ? &fused : nullptr;
  if (dtype == DType::kBFloat16)
    return silu_and_mul ? launch_gemv<__nv_bfloat16, true>(x, weight, bias, y, N, K, f, stream)
                        : launch_gemv<__nv_bfloat16, false>(x, weight, bias, y, N, K, f, stream);
  return silu_and_mul ? launch_gemv<__half, true>(x, weight, bias, y, N, K, f, stream)
                      : launch_gemv<__half, false>(x, weight, bias, y, N, K, f, stream);
}

}  // namespace frspec
