// Instantiations and launcher of the LSE merge (see frspec/merge_states.cuh).
#include "frspec/merge_states.cuh"
#include "frspec/ops.h"

#include <algorithm>

namespace frspec {
namespace {

template <typename T, int VEC>
cudaError_t launch(const void* out_a, const float* lse_a, const void* out_b, const float* lse_b,
                   void* out, float* lse, int64_t rows, int64_t head_dim, cudaStream_t stream) {
  // Threads across a row (capped at 128 so wide rows loop), rows stacked up to 256 threads.
  const int threads_x = static_cast<int>(std::min<int64_t>(ceil_div(head_dim, VEC), 128));
  const int rows_per_block = std::max(1, 256 / threads_x);
  const int64_t blocks = ceil_div(rows, rows_per_block);
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  merge_attention_states_kernel<T, VEC>
      <<<static_cast<unsigned>(blocks), dim3(threads_x, rows_per_block), 0, stream>>>(
          static_cast<const T*>(out_a), lse_a, static_cast<const T*>(out_b), lse_b,
          static_cast<T*>(out), lse, rows, static_cast<int>(head_dim));
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_vec(const void* out_a, const float* lse_a, const void* out_b,
                         const float* lse_b, void* out, float* lse, int64_t rows,
                         int64_t head_dim, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);  // 16-byte accesses
  const bool vectorizable = head_dim % kVec == 0 && is_aligned(out_a, 16) &&
                            is_aligned(out_b, 16) && is_aligned(out, 16);
  if (vectorizable)
    return launch<T, kVec>(out_a, lse_a, out_b, lse_b, out, lse, rows, head_dim, stream);
  return launch<T, 1>(out_a, lse_a, out_b, lse_b, out, lse, rows, head_dim, stream);
}

}  // namespace

cudaError_t merge_attention_states(const void* out_a, const float* lse_a, const void* out_b,
                                   const float* lse_b, void* out, float* lse, int64_t rows,
                                   int64_t head_dim, DType dtype, cudaStream_t stream) {
  if (rows < 0 || head_dim <= 0 || head_dim > (1 << 20)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat16:
      return dispatch_vec<__half>(out_a, lse_a, out_b, lse_b, out, lse, rows, head_dim, stream);
    case DType::kBFloat16:
      return dispatch_vec<__nv_bfloat16>(out_a, lse_a, out_b, lse_b, out, lse, rows, head_dim,
                                         stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace frspec
