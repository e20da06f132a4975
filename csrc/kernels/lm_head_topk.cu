// Instantiations and launcher of the fused FR-Spec head (see frspec/lm_head_topk.cuh).
#include <algorithm>

#include "frspec/lm_head_topk.cuh"
#include "frspec/ops.h"

namespace frspec {
namespace {

int64_t num_blocks(int64_t K) { return ceil_div(K, kHeadRowsPerBlock); }
int64_t partial_k(int64_t k) { return std::min<int64_t>(k, kHeadRowsPerBlock); }

template <typename T, int NT>
cudaError_t launch_partial(const void* hidden, const void* weight, int64_t n, int64_t H,
                           int64_t K, int64_t kc, uint64_t* keys, float2* stats,
                           cudaStream_t stream) {
  const size_t smem = HeadPipe<NT>::kSmemBytes;
  // The epilogue's logits ([NT*8][128] fp32) reuse the pipeline's space.
  static_assert(size_t(NT) * 8 * kHeadRowsPerBlock * 4 <= HeadPipe<NT>::kSmemBytes, "");
  auto kernel = fr_lm_head_partial_kernel<T, NT>;
  FRSPEC_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<static_cast<unsigned>(num_blocks(K)), kHeadThreads, smem, stream>>>(
      static_cast<const T*>(hidden), static_cast<const T*>(weight), static_cast<int>(n),
      static_cast<int>(H), static_cast<int>(K), static_cast<int>(kc), keys, stats);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dispatch_partial(const void* hidden, const void* weight, int64_t n, int64_t H,
                             int64_t K, int64_t kc, uint64_t* keys, float2* stats,
                             cudaStream_t stream) {
  if (n <= 8) return launch_partial<T, 1>(hidden, weight, n, H, K, kc, keys, stats, stream);
  if (n <= 16) return launch_partial<T, 2>(hidden, weight, n, H, K, kc, keys, stats, stream);
  if (n <= 32) return launch_partial<T, 4>(hidden, weight, n, H, K, kc, keys, stats, stream);
  return launch_partial<T, 8>(hidden, weight, n, H, K, kc, keys, stats, stream);
}

}  // namespace

size_t fr_lm_head_topk_workspace_bytes(int64_t n, int64_t K, int64_t k) {
  const int64_t parts = n * num_blocks(K);
  return static_cast<size_t>(parts * partial_k(k)) * sizeof(uint64_t) +
         static_cast<size_t>(parts) * sizeof(float2);
}

cudaError_t fr_lm_head_topk(const void* hidden, const void* weight, const int32_t* ids,
                            int64_t n, int64_t H, int64_t K, int64_t k, DType dtype,
                            void* workspace, int64_t* token_ids, float* logprobs,
                            cudaStream_t stream) {
  if (n < 1 || n > 64 || k < 1 || k > kHeadMaxK || k > K || H < 8 || H % 8 != 0 ||
      K >= (int64_t(1) << 24) || H >= (1 << 24))
    return cudaErrorInvalidValue;
  if (!is_aligned(hidden, 16) || !is_aligned(weight, 16) || !is_aligned(workspace, 16))
    return cudaErrorMisalignedAddress;
  const int64_t nblk = num_blocks(K), kc = partial_k(k);
  uint64_t* keys = static_cast<uint64_t*>(workspace);
  float2* stats = reinterpret_cast<float2*>(keys + n * nblk * kc);
  cudaError_t err = dtype == DType::kBFloat16
                        ? dispatch_partial<__nv_bfloat16>(hidden, weight, n, H, K, kc, keys, stats, stream)
                        : dispatch_partial<__half>(hidden, weight, n, H, K, kc, keys, stats, stream);
  FRSPEC_RETURN_IF_ERROR(err);
  // Programmatic dependent launch: the merge grid is launched while the partial grid
  // finishes (it waits in pdl_wait), hiding one launch latency.
  FRSPEC_RETURN_IF_ERROR(launch_kernel(fr_lm_head_merge_kernel, dim3(static_cast<unsigned>(n)), dim3(kMergeThreads), 0,
                                       stream, static_cast<const uint64_t*>(keys), static_cast<const float2*>(stats),
                                       static_cast<int>(nblk), static_cast<int>(kc), static_cast<int>(k), ids,
                                       token_ids, logprobs));
  return cudaGetLastError();
}

}  // namespace frspec
