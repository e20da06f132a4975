// Launchers of the tree ops (see frspec/tree.cuh).
#include <algorithm>

#include "frspec/ops.h"
#include "frspec/tree.cuh"

namespace frspec {

static int64_t pow2_at_least(int64_t x) {
  int64_t p = 1;
  while (p < x) p *= 2;
  return p;
}

size_t build_dynamic_tree_smem_bytes(int64_t M, int64_t N) {
  return static_cast<size_t>(pow2_at_least(M)) * 8 + static_cast<size_t>(3 * M + N) * 4;
}

cudaError_t build_dynamic_tree(const int64_t* hist_tokens, const int32_t* hist_parents,
                               const float* hist_scores, const int64_t* root_tokens,
                               const int32_t* cache_len, int64_t B, int64_t M, int64_t N,
                               int64_t* tokens, int32_t* parents, int32_t* depth, int64_t* positions,
                               int32_t* history_index, uint64_t* mask, cudaStream_t stream) {
  if (B < 0 || N < 2 || N > kTreeMaxNodes || M < N - 1 || M > kTreeMaxHistory) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  const size_t smem = build_dynamic_tree_smem_bytes(M, N);
  FRSPEC_RETURN_IF_ERROR(cudaFuncSetAttribute(build_dynamic_tree_kernel,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const int W = static_cast<int>((N + 63) / 64);
  build_dynamic_tree_kernel<<<static_cast<unsigned>(B), kTreeThreads, smem, stream>>>(
      hist_tokens, hist_parents, hist_scores, root_tokens, cache_len, static_cast<int>(M),
      static_cast<int>(pow2_at_least(M)), static_cast<int>(N), W, tokens, parents, depth, positions,
      history_index, mask);
  return cudaGetLastError();
}

cudaError_t verify_tree_greedy(const int64_t* tokens, const int32_t* parents, const int64_t* target_argmax,
                               int64_t B, int64_t N, int32_t* accept_len, int32_t* accepted, int64_t* bonus,
                               cudaStream_t stream) {
  if (B < 0 || N < 1 || N > kTreeMaxNodes) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  const int threads = static_cast<int>(std::min<int64_t>(kTreeThreads, std::max<int64_t>(32, pow2_at_least(N))));
  verify_tree_greedy_kernel<<<static_cast<unsigned>(B), threads, 0, stream>>>(
      tokens, parents, target_argmax, static_cast<int>(N), accept_len, accepted, bonus);
  return cudaGetLastError();
}

cudaError_t verify_tree_sampling(const int64_t* tokens, const int32_t* parents, const float* probs,
                                 const float* uniforms, int64_t B, int64_t N, int64_t V, int32_t* accept_len,
                                 int32_t* accepted, int64_t* bonus, cudaStream_t stream) {
  if (B < 0 || N < 1 || N > kTreeMaxNodes || V < 1 || V > kSamplingMaxVocab) return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  // Enough threads to cover the nodes (one each) and to scan the vocabulary in short chunks.
  const int threads = static_cast<int>(
      std::min<int64_t>(kTreeThreads, std::max<int64_t>(64, pow2_at_least(std::max<int64_t>(N, V / 32)))));
  verify_tree_sampling_kernel<<<static_cast<unsigned>(B), threads, 0, stream>>>(
      tokens, parents, probs, uniforms, static_cast<int>(N), static_cast<int>(V), accept_len, accepted, bonus);
  return cudaGetLastError();
}

cudaError_t compact_kv_cache(void* kv, int32_t* cache_len, const int32_t* accepted, const int32_t* accept_len,
                             int64_t planes, int64_t B, int64_t L, int64_t N, int64_t row_bytes,
                             unsigned* counter, cudaStream_t stream) {
  if (planes < 1 || B < 1 || L < 1 || N < 1 || row_bytes < 1) return cudaErrorInvalidValue;
  const int64_t blocks = planes * B;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const bool vec16 = row_bytes % 16 == 0 && is_aligned(kv, 16);
  if (vec16)
    compact_kv_cache_kernel<uint4><<<static_cast<unsigned>(blocks), 128, 0, stream>>>(
        static_cast<char*>(kv), cache_len, accepted, accept_len, static_cast<int>(B), static_cast<int>(L),
        static_cast<int>(N), row_bytes, counter);
  else
    compact_kv_cache_kernel<uint8_t><<<static_cast<unsigned>(blocks), 128, 0, stream>>>(
        static_cast<char*>(kv), cache_len, accepted, accept_len, static_cast<int>(B), static_cast<int>(L),
        static_cast<int>(N), row_bytes, counter);
  return cudaGetLastError();
}

}  // namespace frspec
