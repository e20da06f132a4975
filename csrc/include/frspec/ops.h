// Host-side entry points of every kernel family: plain pointers, sizes and a stream.
// This header is the contract between the kernels (compiled by nvcc alone) and any
// front end: the torch binding (csrc/torch_ops.cpp) and the bench executables.
// Launchers check only what a kernel needs to run safely; user-facing validation
// (dtypes, devices, shapes) lives in the binding.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace frspec {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// Merge two partial attention results over disjoint key sets into the result over
// their union. out_*: [rows, head_dim] in `dtype` (rows = tokens * heads), lse_*:
// [rows] fp32 natural-log sum-exp of the scaled scores. A side with lse = -inf is
// empty and contributes nothing (its out is never read into the result); both empty
// gives out = 0, lse = -inf. Any row-major layout with contiguous rows works.
cudaError_t merge_attention_states(const void* out_a, const float* lse_a, const void* out_b,
                                   const float* lse_b, void* out, float* lse, int64_t rows,
                                   int64_t head_dim, DType dtype, cudaStream_t stream);

}  // namespace frspec

namespace frspec {

// FR-Spec draft head (see frspec/lm_head_topk.cuh). hidden [n, H], weight [K, H] (row i
// is the LM-head row of token ids[i]), both `dtype`, rows 16-byte aligned (H % 8 == 0).
// Writes token_ids [n, k] (int64, ids[draft index]) and logprobs [n, k] (fp32,
// log-softmax over the K rows), sorted by logprob descending, ties by lower draft index.
// Limits: 1 <= n <= 64, 1 <= k <= min(64, K), 8 <= H < 2^24, K < 2^24. Returns
// cudaErrorInvalidValue outside them and cudaErrorMisalignedAddress for unaligned rows.
// `workspace` must hold fr_lm_head_topk_workspace_bytes(n, K, k) bytes.
size_t fr_lm_head_topk_workspace_bytes(int64_t n, int64_t K, int64_t k);
cudaError_t fr_lm_head_topk(const void* hidden, const void* weight, const int32_t* ids,
                            int64_t n, int64_t H, int64_t K, int64_t k, DType dtype,
                            void* workspace, int64_t* token_ids, float* logprobs,
                            cudaStream_t stream);

}  // namespace frspec

namespace frspec {

// EAGLE-2 tree ops (frspec/tree.cuh; semantics in python/frspec_cuda/reference/tree.py).
// One block per sequence. Limits: N <= 1024 nodes, M <= 4096 history candidates,
// vocab V <= 2^18 for sampling. Malformed parent indices are clamped (never out-of-bounds
// memory); the Python wrappers reject them before launch.
size_t build_dynamic_tree_smem_bytes(int64_t M, int64_t N);
cudaError_t build_dynamic_tree(const int64_t* hist_tokens, const int32_t* hist_parents,
                               const float* hist_scores, const int64_t* root_tokens,
                               const int32_t* cache_len, int64_t B, int64_t M, int64_t N,
                               int64_t* tokens, int32_t* parents, int32_t* depth, int64_t* positions,
                               int32_t* history_index, uint64_t* mask, cudaStream_t stream);
cudaError_t verify_tree_greedy(const int64_t* tokens, const int32_t* parents, const int64_t* target_argmax,
                               int64_t B, int64_t N, int32_t* accept_len, int32_t* accepted, int64_t* bonus,
                               cudaStream_t stream);
cudaError_t verify_tree_sampling(const int64_t* tokens, const int32_t* parents, const float* probs,
                                 const float* uniforms, int64_t B, int64_t N, int64_t V, int32_t* accept_len,
                                 int32_t* accepted, int64_t* bonus, cudaStream_t stream);
// kv: [planes = layers * 2][B][L][row_bytes] in place; counter: one zeroed uint32 that the
// kernel leaves zeroed again.
cudaError_t compact_kv_cache(void* kv, int32_t* cache_len, const int32_t* accepted, const int32_t* accept_len,
                             int64_t planes, int64_t B, int64_t L, int64_t N, int64_t row_bytes,
                             unsigned* counter, cudaStream_t stream);

}  // namespace frspec

namespace frspec {

// Tree attention (frspec/tree_attention.cuh, tree_attention_sm90.cuh). q [B, N, Hq, D]:
// the queries of the last N of a tree's tree_len nodes (tree_len <= 0: N, the whole tree;
// fewer queries than nodes: a drafting level, whose earlier levels are already in the
// cache); k, v [B, L_max, Hkv, D] (the tree's keys at cache_len[b] + node);
// mask [B, N, ceil(tree_len/64)] packed bits of the nodes each query sees; out [B, N, Hq, D],
// lse [B, N, Hq] fp32. D in {64, 128}, Hq % Hkv == 0, N <= tree_len <= 1024. `splits` as
// tree_attention_num_splits gives it (requested <= 0: its own rule, planned from max_len and
// N; a one-query call below a longer tree takes the MMA kernel with that count off sm_90a). `workspace` must hold tree_attention_workspace_bytes(...) bytes for the split
// partials (0 if none are needed). impl: kAuto = the warp-specialised TMA + wgmma kernel
// (kWgmma, 2-stage K/V ring) on sm_90a builds running on compute capability 9.0 with
// D == 128 and N > 1, else the mma.sync kernel (kMma; one-node trees take the decode
// kernel). kWgmma issues the P V of key tile j-1 behind the Q K^T of tile j; kept for
// measurement: kWgmmaSerial (each tile's P V issued after its softmax and waited for).
// A wgmma kind where unavailable: cudaErrorNotSupported.
enum class TreeAttnImpl : int { kAuto = 0, kMma = 1, kWgmma = 2, kWgmmaSerial = 3 };
int tree_attention_num_splits(int64_t B, int64_t N, int64_t Hq, int64_t Hkv, int64_t D, int64_t L_max, DType dtype,
                              int64_t requested, TreeAttnImpl impl = TreeAttnImpl::kAuto);
size_t tree_attention_workspace_bytes(int64_t splits, int64_t B, int64_t N, int64_t Hq, int64_t D);
cudaError_t tree_attention(const void* q, const void* k, const void* v, const int32_t* cache_len,
                           const uint64_t* mask, int64_t B, int64_t N, int64_t Hq, int64_t Hkv, int64_t D,
                           int64_t L_max, float scale, int splits, DType dtype, void* workspace, void* out,
                           float* lse, cudaStream_t stream, TreeAttnImpl impl = TreeAttnImpl::kAuto,
                           int64_t tree_len = 0);

}  // namespace frspec

namespace frspec {

// APB host attention (frspec/apb_attention.cuh; semantics in
// python/frspec_cuda/reference/apb.py). q [anchor_len + local_len, Hq, D];
// k, v [passing_len + anchor_len + local_len, Hkv, D]; out like q; lse [Tq, Hq] fp32
// (natural log). All contiguous, 16-byte aligned. D in {64, 128}, Hq % Hkv == 0,
// any lengths (Tq < 2^23). impl: kAuto = the warp-specialised TMA + wgmma kernel with
// ping-pong consumers that issue the P V of tile j-1 behind the Q K^T of tile j
// (kWgmmaPingpongOverlap) on sm_90a builds running on compute capability 9.0 with D == 128,
// else mma.sync (kMma). Kept for measurement: kWgmma (every warp loads, then computes),
// kWgmmaWs (producer warpgroup + TMA, consumers unsynchronised), kWgmmaPingpong (consumers
// take turns issuing), kWgmmaPingpongWindows (+ P V of tile j-1 issued with Q K^T of tile
// j, both waited for). A wgmma kind where unavailable returns cudaErrorNotSupported.
enum class ApbImpl : int {
  kAuto = 0, kMma = 1, kWgmma = 2, kWgmmaWs = 3, kWgmmaPingpong = 4, kWgmmaPingpongWindows = 5, kWgmmaPingpongOverlap = 6
};
cudaError_t apb_attention(const void* q, const void* k, const void* v, int64_t anchor_len, int64_t local_len,
                          int64_t passing_len, int64_t Hq, int64_t Hkv, int64_t D, float scale, DType dtype,
                          void* out, float* lse, cudaStream_t stream, ApbImpl impl = ApbImpl::kAuto);

}  // namespace frspec

namespace frspec {

// Fused decoder-layer pieces (frspec/decoder.cuh; semantics in
// python/frspec_cuda/reference/decoder.py). Row-major, contiguous.
// rms_norm: x, out [rows, H], weight [H]; with residual [rows, H] non-null, sum_out =
// round(x + residual) is written and normalised instead of x.
cudaError_t rms_norm(const void* x, const void* residual, const void* weight, void* out, void* sum_out,
                     int64_t rows, int64_t H, float eps, DType dtype, cudaStream_t stream);
// silu_and_mul: gate_up [rows, 2 I] -> out [rows, I] = silu(gate) * up.
cudaError_t silu_and_mul(const void* gate_up, void* out, int64_t rows, int64_t I, DType dtype, cudaStream_t stream);
// rope_qk_store_kv: qkv [B, T, Hq + 2 Hkv, D] (the fused projection) -> q_out [B, T, Hq, D]
// rotated (rotate-half RoPE at positions [B, T] with inv_freq [D / 2] fp32); keys rotated
// and values copied into k_cache / v_cache [B, L, Hkv, D] at slots [B, T] (a slot outside
// [0, L) writes nothing). D even, <= 2048.
cudaError_t rope_qk_store_kv(const void* qkv, const int64_t* positions, const float* inv_freq, const int64_t* slots,
                             void* q_out, void* k_cache, void* v_cache, int64_t B, int64_t T, int64_t Hq,
                             int64_t Hkv, int64_t D, int64_t L, DType dtype, cudaStream_t stream);
// gemv: y [N] = weight [N, K] @ x [K] (+ bias [N], may be null), fp32 accumulation, one
// rounding. K % 8 == 0 and x / weight 16-byte aligned (else cudaErrorMisalignedAddress).
// silu_and_mul: weight is the fused [gate; up] projection [2 N, K] and y [N] = silu(gate) *
// up, rounded as gemv + silu_and_mul would (no bias). norm (non-null): x is first replaced
// by rms_norm(x [+ residual]) as rms_norm() computes it, in every block (no extra kernel);
// with a residual, x + residual is also written to sum_out. K <= 16384 with norm.
struct GemvNormArgs {
  const void* residual;  // [K] or null
  const void* weight;    // [K]
  void* sum_out;         // [K] (with residual)
  float eps;
};
cudaError_t gemv(const void* x, const void* weight, const void* bias, void* y, int64_t N, int64_t K, DType dtype,
                 cudaStream_t stream, const GemvNormArgs* norm = nullptr, bool silu_and_mul = false);
// Bytes of weight rows (all rows of one call together) each gemv asks into L2 before it
// waits for the previous kernel (default 0 = off: slower where measured); returns the previous budget.
int64_t set_gemv_l2_prefetch_bytes(int64_t budget);

// Programmatic dependent launch for the kernels above and tree attention (on by default;
// FRSPEC_PDL=0 in the environment turns it off). Declared in frspec/common.cuh.
bool pdl_enabled();
void set_pdl_enabled(bool enabled);

}  // namespace frspec
