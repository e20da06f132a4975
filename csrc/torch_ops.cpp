// The one torch binding of frspec_cuda: op schemas (TORCH_LIBRARY), CUDA
// implementations that validate their inputs with TORCH_CHECK and call the
// framework-free launchers of csrc/include/frspec/ops.h on the current stream.
// CPU tensors never reach this file: python/frspec_cuda/ops.py runs the PyTorch
// reference for them.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "frspec/ops.h"

namespace {

frspec::DType to_frspec_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kHalf:
      return frspec::DType::kFloat16;
    case at::kBFloat16:
      return frspec::DType::kBFloat16;
    default:
      TORCH_CHECK(false, name, " must be float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_cuda(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == device, name, " is on ", t.device(), " but the other inputs are on ",
              device);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (got strides ", t.strides(), ")");
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, " kernel launch failed: ", cudaGetErrorString(err));
}

std::tuple<at::Tensor, at::Tensor> merge_attention_states(const at::Tensor& out_a,
                                                          const at::Tensor& lse_a,
                                                          const at::Tensor& out_b,
                                                          const at::Tensor& lse_b) {
  const at::Device device = out_a.device();
  check_cuda(out_a, "out_a", device);
  check_cuda(lse_a, "lse_a", device);
  check_cuda(out_b, "out_b", device);
  check_cuda(lse_b, "lse_b", device);
  TORCH_CHECK(out_a.dim() == 3, "out_a must be [tokens, heads, head_dim], got shape ",
              out_a.sizes());
  TORCH_CHECK(out_b.sizes() == out_a.sizes(), "out_b shape ", out_b.sizes(),
              " must equal out_a shape ", out_a.sizes());
  TORCH_CHECK(out_b.scalar_type() == out_a.scalar_type(), "out_b dtype ", out_b.scalar_type(),
              " must equal out_a dtype ", out_a.scalar_type());
  const frspec::DType dtype = to_frspec_dtype(out_a, "out_a");
  const int64_t tokens = out_a.size(0), heads = out_a.size(1), head_dim = out_a.size(2);
  TORCH_CHECK(head_dim > 0 && head_dim <= (1 << 20), "head_dim must be in [1, 2^20], got ",
              head_dim);
  for (const auto& [lse, name] : {std::pair{&lse_a, "lse_a"}, std::pair{&lse_b, "lse_b"}}) {
    TORCH_CHECK(lse->scalar_type() == at::kFloat, name, " must be float32, got ",
                lse->scalar_type());
    TORCH_CHECK(lse->dim() == 2 && lse->size(0) == tokens && lse->size(1) == heads, name,
                " must be [tokens, heads] = [", tokens, ", ", heads, "], got shape ",
                lse->sizes());
  }
  at::Tensor out = at::empty_like(out_a);
  at::Tensor lse = at::empty_like(lse_a);
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::merge_attention_states(out_a.data_ptr(), lse_a.data_ptr<float>(),
                                              out_b.data_ptr(), lse_b.data_ptr<float>(),
                                              out.data_ptr(), lse.data_ptr<float>(),
                                              tokens * heads, head_dim, dtype,
                                              c10::cuda::getCurrentCUDAStream()),
               "merge_attention_states");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> fr_lm_head_topk(const at::Tensor& hidden,
                                                   const at::Tensor& weight,
                                                   const at::Tensor& ids, int64_t k) {
  const at::Device device = hidden.device();
  check_cuda(hidden, "hidden", device);
  check_cuda(weight, "weight", device);
  check_cuda(ids, "ids", device);
  TORCH_CHECK(hidden.dim() == 2, "hidden must be [n, hidden_size], got shape ", hidden.sizes());
  TORCH_CHECK(weight.dim() == 2, "weight must be [K, hidden_size], got shape ", weight.sizes());
  TORCH_CHECK(ids.dim() == 1, "ids must be [K], got shape ", ids.sizes());
  const frspec::DType dtype = to_frspec_dtype(hidden, "hidden");
  TORCH_CHECK(weight.scalar_type() == hidden.scalar_type(), "weight dtype ",
              weight.scalar_type(), " must equal hidden dtype ", hidden.scalar_type());
  TORCH_CHECK(ids.scalar_type() == at::kInt, "ids must be int32, got ", ids.scalar_type());
  const int64_t n = hidden.size(0), H = hidden.size(1), K = weight.size(0);
  TORCH_CHECK(weight.size(1) == H, "weight has hidden size ", weight.size(1),
              " but hidden has ", H);
  TORCH_CHECK(ids.size(0) == K, "ids has ", ids.size(0), " entries but weight has ", K, " rows");
  TORCH_CHECK(n >= 1 && n <= 64, "fr_lm_head_topk takes 1..64 hidden rows per call, got ", n);
  TORCH_CHECK(K >= 1 && K < (int64_t(1) << 24), "weight must have 1..2^24-1 rows, got ", K);
  TORCH_CHECK(k >= 1 && k <= 64 && k <= K, "k must be in [1, min(64, K=", K, ")], got ", k);
  TORCH_CHECK(H >= 8 && H % 8 == 0 && H < (1 << 24),
              "hidden_size must be a multiple of 8 in [8, 2^24), got ", H);
  for (const auto& [t, name] : {std::pair{&hidden, "hidden"}, std::pair{&weight, "weight"}})
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, name,
                " must start at a 16-byte aligned address (a view at an odd offset? .clone() it)");
  at::Tensor token_ids = at::empty({n, k}, hidden.options().dtype(at::kLong));
  at::Tensor logprobs = at::empty({n, k}, hidden.options().dtype(at::kFloat));
  at::Tensor workspace = at::empty(
      {static_cast<int64_t>(frspec::fr_lm_head_topk_workspace_bytes(n, K, k))},
      hidden.options().dtype(at::kByte));
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::fr_lm_head_topk(hidden.data_ptr(), weight.data_ptr(),
                                       ids.data_ptr<int32_t>(), n, H, K, k, dtype,
                                       workspace.data_ptr(), token_ids.data_ptr<int64_t>(),
                                       logprobs.data_ptr<float>(),
                                       c10::cuda::getCurrentCUDAStream()),
               "fr_lm_head_topk");
  return {token_ids, logprobs};
}

void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> build_dynamic_tree(
    const at::Tensor& hist_tokens, const at::Tensor& hist_parents, const at::Tensor& hist_scores,
    const at::Tensor& root_tokens, const at::Tensor& cache_len, int64_t num_nodes) {
  const at::Device device = hist_tokens.device();
  for (const auto& [t, name] : {std::pair{&hist_tokens, "hist_tokens"}, std::pair{&hist_parents, "hist_parents"},
                                std::pair{&hist_scores, "hist_scores"}, std::pair{&root_tokens, "root_tokens"},
                                std::pair{&cache_len, "cache_len"}})
    check_cuda(*t, name, device);
  check_dtype(hist_tokens, at::kLong, "hist_tokens");
  check_dtype(hist_parents, at::kInt, "hist_parents");
  check_dtype(hist_scores, at::kFloat, "hist_scores");
  check_dtype(root_tokens, at::kLong, "root_tokens");
  check_dtype(cache_len, at::kInt, "cache_len");
  TORCH_CHECK(hist_tokens.dim() == 2, "hist_tokens must be [batch, history], got shape ", hist_tokens.sizes());
  const int64_t B = hist_tokens.size(0), M = hist_tokens.size(1), N = num_nodes;
  check_shape(hist_parents, {B, M}, "hist_parents");
  check_shape(hist_scores, {B, M}, "hist_scores");
  check_shape(root_tokens, {B}, "root_tokens");
  check_shape(cache_len, {B}, "cache_len");
  TORCH_CHECK(N >= 2 && N <= 1024, "num_nodes must be in [2, 1024], got ", N);
  TORCH_CHECK(M >= N - 1 && M <= 4096, "history must hold between num_nodes-1=", N - 1,
              " and 4096 candidates, got ", M);
  const int64_t W = (N + 63) / 64;
  auto opts = hist_tokens.options();
  at::Tensor tokens = at::empty({B, N}, opts), parents = at::empty({B, N}, opts.dtype(at::kInt));
  at::Tensor depth = at::empty({B, N}, opts.dtype(at::kInt)), positions = at::empty({B, N}, opts);
  at::Tensor history_index = at::empty({B, N}, opts.dtype(at::kInt)), mask = at::empty({B, N, W}, opts);
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::build_dynamic_tree(
                   hist_tokens.data_ptr<int64_t>(), hist_parents.data_ptr<int32_t>(), hist_scores.data_ptr<float>(),
                   root_tokens.data_ptr<int64_t>(), cache_len.data_ptr<int32_t>(), B, M, N,
                   tokens.data_ptr<int64_t>(), parents.data_ptr<int32_t>(), depth.data_ptr<int32_t>(),
                   positions.data_ptr<int64_t>(), history_index.data_ptr<int32_t>(),
                   reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()), c10::cuda::getCurrentCUDAStream()),
               "build_dynamic_tree");
  return {tokens, parents, depth, positions, history_index, mask};
}

// Shared checks of the two verification ops; returns (B, N).
std::pair<int64_t, int64_t> check_tree_inputs(const at::Tensor& tokens, const at::Tensor& parents,
                                              const at::Device& device) {
  check_cuda(tokens, "tokens", device);
  check_cuda(parents, "parents", device);
  check_dtype(tokens, at::kLong, "tokens");
  check_dtype(parents, at::kInt, "parents");
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [batch, nodes], got shape ", tokens.sizes());
  const int64_t B = tokens.size(0), N = tokens.size(1);
  check_shape(parents, {B, N}, "parents");
  TORCH_CHECK(N >= 1 && N <= 1024, "a tree must have 1..1024 nodes, got ", N);
  return {B, N};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_outputs(const at::Tensor& like, int64_t B, int64_t N) {
  auto opts = like.options();
  return {at::empty({B}, opts.dtype(at::kInt)), at::empty({B, N}, opts.dtype(at::kInt)), at::empty({B}, opts.dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_greedy(const at::Tensor& tokens, const at::Tensor& parents,
                                                                  const at::Tensor& target_argmax) {
  const at::Device device = tokens.device();
  const auto [B, N] = check_tree_inputs(tokens, parents, device);
  check_cuda(target_argmax, "target_argmax", device);
  check_dtype(target_argmax, at::kLong, "target_argmax");
  check_shape(target_argmax, {B, N}, "target_argmax");
  auto [accept_len, accepted, bonus] = verify_outputs(tokens, B, N);
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::verify_tree_greedy(tokens.data_ptr<int64_t>(), parents.data_ptr<int32_t>(),
                                          target_argmax.data_ptr<int64_t>(), B, N, accept_len.data_ptr<int32_t>(),
                                          accepted.data_ptr<int32_t>(), bonus.data_ptr<int64_t>(),
                                          c10::cuda::getCurrentCUDAStream()),
               "verify_tree_greedy");
  return {accept_len, accepted, bonus};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_sampling(const at::Tensor& tokens,
                                                                    const at::Tensor& parents,
                                                                    const at::Tensor& probs,
                                                                    const at::Tensor& uniforms) {
  const at::Device device = tokens.device();
  const auto [B, N] = check_tree_inputs(tokens, parents, device);
  check_cuda(probs, "probs", device);
  check_cuda(uniforms, "uniforms", device);
  check_dtype(probs, at::kFloat, "probs");
  check_dtype(uniforms, at::kFloat, "uniforms");
  TORCH_CHECK(probs.dim() == 3 && probs.size(0) == B && probs.size(1) == N,
              "probs must be [batch, nodes, vocab] = [", B, ", ", N, ", V], got shape ", probs.sizes());
  const int64_t V = probs.size(2);
  TORCH_CHECK(V >= 1 && V <= (1 << 18), "vocab size must be in [1, 2^18], got ", V);
  check_shape(uniforms, {B, N}, "uniforms");
  auto [accept_len, accepted, bonus] = verify_outputs(tokens, B, N);
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::verify_tree_sampling(tokens.data_ptr<int64_t>(), parents.data_ptr<int32_t>(),
                                            probs.data_ptr<float>(), uniforms.data_ptr<float>(), B, N, V,
                                            accept_len.data_ptr<int32_t>(), accepted.data_ptr<int32_t>(),
                                            bonus.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream()),
               "verify_tree_sampling");
  return {accept_len, accepted, bonus};
}

void compact_kv_cache(const at::Tensor& kv_cache, const at::Tensor& cache_len, const at::Tensor& accepted,
                      const at::Tensor& accept_len, const at::Tensor& counter) {
  const at::Device device = kv_cache.device();
  for (const auto& [t, name] : {std::pair{&kv_cache, "kv_cache"}, std::pair{&cache_len, "cache_len"},
                                std::pair{&accepted, "accepted"}, std::pair{&accept_len, "accept_len"},
                                std::pair{&counter, "counter"}})
    check_cuda(*t, name, device);
  TORCH_CHECK(kv_cache.dim() == 6 && kv_cache.size(1) == 2,
              "kv_cache must be [layers, 2, batch, max_len, kv_heads, head_dim], got shape ", kv_cache.sizes());
  const int64_t B = kv_cache.size(2), L = kv_cache.size(3);
  check_dtype(cache_len, at::kInt, "cache_len");
  check_dtype(accept_len, at::kInt, "accept_len");
  check_dtype(accepted, at::kInt, "accepted");
  check_dtype(counter, at::kInt, "counter");
  check_shape(cache_len, {B}, "cache_len");
  check_shape(accept_len, {B}, "accept_len");
  TORCH_CHECK(accepted.dim() == 2 && accepted.size(0) == B, "accepted must be [batch=", B, ", nodes], got shape ",
              accepted.sizes());
  TORCH_CHECK(counter.numel() == 1, "counter must hold one int32");
  const int64_t row_bytes = kv_cache.size(4) * kv_cache.size(5) * kv_cache.element_size();
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::compact_kv_cache(kv_cache.data_ptr(), cache_len.data_ptr<int32_t>(),
                                        accepted.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(),
                                        kv_cache.size(0) * 2, B, L, accepted.size(1), row_bytes,
                                        reinterpret_cast<unsigned*>(counter.data_ptr<int32_t>()),
                                        c10::cuda::getCurrentCUDAStream()),
               "compact_kv_cache");
}

// tree_attention's impl argument (both tree-attention ops take it).
frspec::TreeAttnImpl tree_attention_impl(int64_t impl) {
  TORCH_CHECK(impl >= 0 && impl <= 3, "tree_attention impl must be 0 (auto), 1 (mma), 2 (wgmma) or 3 (wgmma_serial), got ",
              impl);
  return static_cast<frspec::TreeAttnImpl>(impl);
}

std::tuple<at::Tensor, at::Tensor> tree_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                                  const at::Tensor& v_cache, const at::Tensor& cache_len,
                                                  const at::Tensor& mask, double scale, int64_t num_splits,
                                                  int64_t impl, int64_t tree_len) {
  const at::Device device = q.device();
  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k_cache, "k_cache"}, std::pair{&v_cache, "v_cache"},
                                std::pair{&cache_len, "cache_len"}, std::pair{&mask, "mask"}})
    check_cuda(*t, name, device);
  const frspec::DType dtype = to_frspec_dtype(q, "q");
  TORCH_CHECK(q.dim() == 4, "q must be [batch, nodes, q_heads, head_dim], got shape ", q.sizes());
  const int64_t B = q.size(0), N = q.size(1), Hq = q.size(2), D = q.size(3);
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(0) == B && k_cache.size(3) == D,
              "k_cache must be [batch=", B, ", max_len, kv_heads, head_dim=", D, "], got shape ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache shape ", v_cache.sizes(), " must equal k_cache shape ",
              k_cache.sizes());
  for (const auto& [t, name] : {std::pair{&k_cache, "k_cache"}, std::pair{&v_cache, "v_cache"}})
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), name, " dtype ", t->scalar_type(), " must equal q dtype ",
                q.scalar_type());
  const int64_t L = k_cache.size(1), Hkv = k_cache.size(2);
  TORCH_CHECK(D == 64 || D == 128, "head_dim must be 64 or 128, got ", D);
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, "q_heads (", Hq, ") must be a multiple of kv_heads (", Hkv, ")");
  const int64_t T = tree_len == 0 ? N : tree_len;  // the tree's nodes; q holds the last N
  TORCH_CHECK(N >= 1 && N <= 1024, "a tree must have 1..1024 nodes, got ", N);
  TORCH_CHECK(T >= N && T <= 1024, "tree_len (", tree_len, ") must be 0 (= nodes) or in [nodes = ", N, ", 1024]");
  TORCH_CHECK(L >= T && L < (int64_t(1) << 31), "max_len ", L, " cannot hold the ", T, " tree nodes");
  check_dtype(cache_len, at::kInt, "cache_len");
  check_shape(cache_len, {B}, "cache_len");
  check_dtype(mask, at::kLong, "mask");
  check_shape(mask, {B, N, (T + 63) / 64}, "mask");
  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k_cache, "k_cache"}, std::pair{&v_cache, "v_cache"}})
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0, name,
                " must start at a 16-byte aligned address (a view at an odd offset? .clone() it)");
  const auto kind = tree_attention_impl(impl);
  TORCH_CHECK(B <= 65535 && Hkv <= 65535, "batch (", B, ") and kv_heads (", Hkv, ") must be <= 65535");
  const int splits = frspec::tree_attention_num_splits(B, N, Hq, Hkv, D, L, dtype, num_splits, kind);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({B, N, Hq}, q.options().dtype(at::kFloat));
  at::Tensor workspace = at::empty(
      {static_cast<int64_t>(frspec::tree_attention_workspace_bytes(splits, B, N, Hq, D) / 4) + 1},
      q.options().dtype(at::kFloat));
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::tree_attention(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                      cache_len.data_ptr<int32_t>(),
                                      reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()), B, N, Hq, Hkv, D, L,
                                      static_cast<float>(scale), splits, dtype, workspace.data_ptr(), out.data_ptr(),
                                      lse.data_ptr<float>(), c10::cuda::getCurrentCUDAStream(), kind, T),
               "tree_attention");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> apb_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 int64_t anchor_len, int64_t passing_len, double scale,
                                                 int64_t impl) {
  const at::Device device = q.device();
  for (const auto& [t, name] : {std::pair{&q, "q"}, std::pair{&k, "k"}, std::pair{&v, "v"}}) {
    check_cuda(*t, name, device);
    TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  const frspec::DType dtype = to_frspec_dtype(q, "q");
  TORCH_CHECK(q.dim() == 3, "q must be [anchor_len + local_len, q_heads, head_dim], got shape ", q.sizes());
  TORCH_CHECK(k.dim() == 3, "k must be [passing_len + anchor_len + local_len, kv_heads, head_dim], got shape ",
              k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v shape ", v.sizes(), " must equal k shape ", k.sizes());
  for (const auto& [t, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}})
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), name, " dtype ", t->scalar_type(), " must equal q dtype ",
                q.scalar_type());
  const int64_t Tq = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k.size(1);
  TORCH_CHECK(anchor_len >= 0 && passing_len >= 0, "anchor_len and passing_len must be >= 0, got ", anchor_len, ", ",
              passing_len);
  TORCH_CHECK(anchor_len <= Tq, "q has ", Tq, " rows, fewer than anchor_len ", anchor_len);
  TORCH_CHECK(k.size(0) == passing_len + Tq, "k must have passing_len + anchor_len + local_len = ", passing_len + Tq,
              " rows, got ", k.size(0));
  TORCH_CHECK(D == 64 || D == 128, "head_dim must be 64 or 128, got ", D);
  TORCH_CHECK(k.size(2) == D, "k head_dim ", k.size(2), " must equal q head_dim ", D);
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, "q_heads (", Hq, ") must be a multiple of kv_heads (", Hkv, ")");
  TORCH_CHECK(Hq <= 65535, "at most 65535 query heads, got ", Hq);
  TORCH_CHECK(impl >= 0 && impl <= 6,
              "impl must be 0 (auto), 1 (mma.sync), 2 (wgmma), 3 (wgmma_ws), 4 (wgmma_pingpong), 5 "
              "(wgmma_pingpong_windows) or 6 (wgmma_pingpong_overlap), got ", impl);
  TORCH_CHECK(scale > 0, "scale must be > 0, got ", scale);
  TORCH_CHECK(Tq < (int64_t(1) << 23) && k.size(0) < (int64_t(1) << 30), "sequence too long: ", Tq, " queries, ",
              k.size(0), " keys");
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({Tq, Hq}, q.options().dtype(at::kFloat));
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::apb_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), anchor_len, Tq - anchor_len,
                                     passing_len, Hq, Hkv, D, static_cast<float>(scale), dtype, out.data_ptr(),
                                     lse.data_ptr<float>(), c10::cuda::getCurrentCUDAStream(),
                                     static_cast<frspec::ApbImpl>(impl)),
               "apb_attention");
  return {out, lse};
}

// ---- fused decoder-layer pieces (frspec/decoder.cuh) ----

void check_norm_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Device& device) {
  check_cuda(x, "x", device);
  check_cuda(weight, "weight", device);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0, "x must be [..., hidden] with hidden > 0, got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), "weight must be [hidden] = [", x.size(-1),
              "], got shape ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "weight dtype ", weight.scalar_type(),
              " must equal x dtype ", x.scalar_type());
  TORCH_CHECK(x.size(-1) <= (1 << 24), "hidden must be <= 2^24, got ", x.size(-1));
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Device device = x.device();
  check_norm_inputs(x, weight, device);
  const frspec::DType dtype = to_frspec_dtype(x, "x");
  const int64_t H = x.size(-1), rows = x.numel() / H;
  TORCH_CHECK(rows <= 0x7fffffff, "rms_norm: at most 2^31 - 1 rows, got ", rows);
  at::Tensor out = at::empty_like(x);
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::rms_norm(x.data_ptr(), nullptr, weight.data_ptr(), out.data_ptr(), nullptr, rows, H,
                                static_cast<float>(eps), dtype, c10::cuda::getCurrentCUDAStream()),
               "rms_norm");
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                const at::Tensor& weight, double eps) {
  const at::Device device = x.device();
  check_norm_inputs(x, weight, device);
  check_cuda(residual, "residual", device);
  TORCH_CHECK(residual.sizes() == x.sizes(), "residual shape ", residual.sizes(), " must equal x shape ", x.sizes());
  TORCH_CHECK(residual.scalar_type() == x.scalar_type(), "residual dtype ", residual.scalar_type(),
              " must equal x dtype ", x.scalar_type());
  const frspec::DType dtype = to_frspec_dtype(x, "x");
  const int64_t H = x.size(-1), rows = x.numel() / H;
  TORCH_CHECK(rows <= 0x7fffffff, "add_rms_norm: at most 2^31 - 1 rows, got ", rows);
  at::Tensor out = at::empty_like(x);
  at::Tensor sum = at::empty_like(x);
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::rms_norm(x.data_ptr(), residual.data_ptr(), weight.data_ptr(), out.data_ptr(),
                                sum.data_ptr(), rows, H, static_cast<float>(eps), dtype,
                                c10::cuda::getCurrentCUDAStream()),
               "add_rms_norm");
  return {out, sum};
}

at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  const at::Device device = gate_up.device();
  check_cuda(gate_up, "gate_up", device);
  TORCH_CHECK(gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0 && gate_up.size(-1) > 0,
              "gate_up must be [..., 2 * intermediate], got shape ", gate_up.sizes());
  const frspec::DType dtype = to_frspec_dtype(gate_up, "gate_up");
  const int64_t I = gate_up.size(-1) / 2, rows = gate_up.numel() / (2 * I);
  TORCH_CHECK(I <= (1 << 28), "intermediate must be <= 2^28, got ", I);
  auto shape = gate_up.sizes().vec();
  shape.back() = I;
  at::Tensor out = at::empty(shape, gate_up.options());
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::silu_and_mul(gate_up.data_ptr(), out.data_ptr(), rows, I, dtype,
                                    c10::cuda::getCurrentCUDAStream()),
               "silu_and_mul");
  return out;
}

at::Tensor rope_qk_store_kv(const at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& inv_freq,
                            const at::Tensor& slots, at::Tensor& k_cache, at::Tensor& v_cache, int64_t num_heads) {
  const at::Device device = qkv.device();
  check_cuda(qkv, "qkv", device);
  check_cuda(positions, "positions", device);
  check_cuda(inv_freq, "inv_freq", device);
  check_cuda(slots, "slots", device);
  check_cuda(k_cache, "k_cache", device);
  check_cuda(v_cache, "v_cache", device);
  const frspec::DType dtype = to_frspec_dtype(qkv, "qkv");
  TORCH_CHECK(k_cache.dim() == 4, "k_cache must be [B, max_len, kv_heads, head_dim], got shape ", k_cache.sizes());
  TORCH_CHECK(v_cache.sizes() == k_cache.sizes(), "v_cache shape ", v_cache.sizes(), " must equal k_cache shape ",
              k_cache.sizes());
  for (const auto& [t, name] : {std::pair{&k_cache, "k_cache"}, std::pair{&v_cache, "v_cache"}})
    TORCH_CHECK(t->scalar_type() == qkv.scalar_type(), name, " dtype ", t->scalar_type(), " must equal qkv dtype ",
                qkv.scalar_type());
  const int64_t B = k_cache.size(0), L = k_cache.size(1), Hkv = k_cache.size(2), D = k_cache.size(3);
  TORCH_CHECK(num_heads > 0 && num_heads % Hkv == 0, "num_heads ", num_heads,
              " must be a positive multiple of the cache's kv_heads ", Hkv);
  TORCH_CHECK(D % 2 == 0 && D <= 2048, "head_dim must be even and <= 2048, got ", D);
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(0) == B && qkv.size(2) == (num_heads + 2 * Hkv) * D,
              "qkv must be [B, T, (num_heads + 2 * kv_heads) * head_dim] = [", B, ", T, ",
              (num_heads + 2 * Hkv) * D, "], got shape ", qkv.sizes());
  const int64_t T = qkv.size(1);
  for (const auto& [t, name] : {std::pair{&positions, "positions"}, std::pair{&slots, "slots"}}) {
    TORCH_CHECK(t->scalar_type() == at::kLong, name, " must be int64, got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 2 && t->size(0) == B && t->size(1) == T, name, " must be [B, T] = [", B, ", ", T,
                "], got shape ", t->sizes());
  }
  TORCH_CHECK(inv_freq.scalar_type() == at::kFloat && inv_freq.dim() == 1 && inv_freq.size(0) == D / 2,
              "inv_freq must be float32 [head_dim / 2] = [", D / 2, "], got ", inv_freq.scalar_type(), " ",
              inv_freq.sizes());
  TORCH_CHECK(B * T <= 0x7fffffff, "rope_qk_store_kv: at most 2^31 - 1 tokens");
  at::Tensor q = at::empty({B, T, num_heads, D}, qkv.options());
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::rope_qk_store_kv(qkv.data_ptr(), positions.data_ptr<int64_t>(), inv_freq.data_ptr<float>(),
                                        slots.data_ptr<int64_t>(), q.data_ptr(), k_cache.data_ptr(),
                                        v_cache.data_ptr(), B, T, num_heads, Hkv, D, L, dtype,
                                        c10::cuda::getCurrentCUDAStream()),
               "rope_qk_store_kv");
  return q;
}

// One-row GEMV family: y = weight @ x (+ bias); silu_and_mul: weight = [gate; up]; norm: x
// replaced by rms_norm(x [+ residual]) first (sum = x + residual returned, else empty).
std::tuple<at::Tensor, at::Tensor> gemv_impl(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                             const std::optional<at::Tensor>& bias, bool silu_and_mul,
                                             const at::Tensor* norm_weight, const std::optional<at::Tensor>& residual,
                                             double eps) {
  const at::Device device = x.device();
  check_cuda(x, "x", device);
  check_cuda(weight, "weight", device);
  const frspec::DType dtype = to_frspec_dtype(x, "x");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) > 0, op, ": weight must be [out_features, in_features], got shape ",
              weight.sizes());
  TORCH_CHECK(!silu_and_mul || weight.size(0) % 2 == 0, op, ": weight must be [2 * intermediate, in_features] "
              "(the fused gate and up projections), got shape ", weight.sizes());
  const int64_t N = silu_and_mul ? weight.size(0) / 2 : weight.size(0), K = weight.size(1);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K && x.numel() == K, op, " takes one row: x must be [..., ", K,
              "] with one row, got shape ", x.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "weight dtype ", weight.scalar_type(), " must equal x dtype ",
              x.scalar_type());
  TORCH_CHECK(K > 0 && K % 8 == 0, "in_features must be a positive multiple of 8, got ", K);
  TORCH_CHECK(weight.size(0) <= 0x7fffffff && K <= 0x7fffffff, op, ": weight dimensions must be < 2^31, got ",
              weight.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0,
              op, ": x and weight must be 16-byte aligned");
  if (bias) {
    check_cuda(*bias, "bias", device);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "bias must be [out_features] = [", N, "], got shape ",
                bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "bias dtype ", bias->scalar_type(), " must equal x dtype ",
                x.scalar_type());
  }
  frspec::GemvNormArgs norm{};
  at::Tensor sum = at::empty({0}, x.options());
  if (norm_weight) {
    check_cuda(*norm_weight, "norm_weight", device);
    TORCH_CHECK(norm_weight->dim() == 1 && norm_weight->size(0) == K, "norm_weight must be [in_features] = [", K,
                "], got shape ", norm_weight->sizes());
    TORCH_CHECK(norm_weight->scalar_type() == x.scalar_type(), "norm_weight dtype ", norm_weight->scalar_type(),
                " must equal x dtype ", x.scalar_type());
    TORCH_CHECK(K <= 16384, op, ": in_features must be <= 16384 with the fused norm, got ", K);
    TORCH_CHECK(reinterpret_cast<uintptr_t>(norm_weight->data_ptr()) % 16 == 0, "norm_weight must be 16-byte aligned");
    norm.weight = norm_weight->data_ptr();
    norm.eps = static_cast<float>(eps);
    if (residual) {
      check_cuda(*residual, "residual", device);
      TORCH_CHECK(residual->sizes() == x.sizes(), "residual shape ", residual->sizes(), " must equal x shape ",
                  x.sizes());
      TORCH_CHECK(residual->scalar_type() == x.scalar_type(), "residual dtype ", residual->scalar_type(),
                  " must equal x dtype ", x.scalar_type());
      TORCH_CHECK(reinterpret_cast<uintptr_t>(residual->data_ptr()) % 16 == 0, "residual must be 16-byte aligned");
      sum = at::empty_like(x);
      norm.residual = residual->data_ptr();
      norm.sum_out = sum.data_ptr();
    }
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  at::Tensor y = at::empty(shape, x.options());
  const c10::cuda::CUDAGuard guard(device);
  check_launch(frspec::gemv(x.data_ptr(), weight.data_ptr(), bias ? bias->data_ptr() : nullptr, y.data_ptr(), N, K,
                            dtype, c10::cuda::getCurrentCUDAStream(), norm_weight ? &norm : nullptr, silu_and_mul),
               op);
  return {y, sum};
}

at::Tensor gemv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  return std::get<0>(gemv_impl("gemv", x, weight, bias, false, nullptr, std::nullopt, 0.0));
}

at::Tensor gemv_silu_and_mul(const at::Tensor& x, const at::Tensor& gate_up_weight) {
  return std::get<0>(gemv_impl("gemv_silu_and_mul", x, gate_up_weight, std::nullopt, true, nullptr, std::nullopt, 0.0));
}

std::tuple<at::Tensor, at::Tensor> rms_norm_gemv(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                                 const at::Tensor& norm_weight, double eps, const at::Tensor& weight,
                                                 const std::optional<at::Tensor>& bias, bool silu_and_mul) {
  return gemv_impl("rms_norm_gemv", x, weight, bias, silu_and_mul, &norm_weight, residual, eps);
}

// Programmatic dependent launch on/off for this process; returns the previous setting.
bool set_programmatic_launch(bool enabled) {
  const bool previous = frspec::pdl_enabled();
  frspec::set_pdl_enabled(enabled);
  return previous;
}

int64_t set_gemv_l2_prefetch_bytes(int64_t budget) { return frspec::set_gemv_l2_prefetch_bytes(budget); }

// The split count tree_attention takes for a shape (0 = its own choice; for benchmarks and
// tests of the split rule). Reads the current device's SM count.
int64_t tree_attention_num_splits(int64_t B, int64_t N, int64_t Hq, int64_t Hkv, int64_t D, int64_t max_len,
                                  bool bf16, int64_t num_splits, int64_t impl) {
  TORCH_CHECK(B >= 1 && N >= 1 && Hkv >= 1 && Hq % Hkv == 0 && (D == 64 || D == 128) && max_len >= N,
              "tree_attention_num_splits: bad shape B=", B, " N=", N, " Hq=", Hq, " Hkv=", Hkv, " D=", D,
              " max_len=", max_len);
  return frspec::tree_attention_num_splits(B, N, Hq, Hkv, D, max_len,
                                           bf16 ? frspec::DType::kBFloat16 : frspec::DType::kFloat16, num_splits,
                                           tree_attention_impl(impl));
}

// What this binary was built with (string literals defined by CMakeLists.txt);
// `python -m frspec_cuda info` prints it.
std::string build_info() {
  return std::string("{\"cuda_archs\": \"") + FRSPEC_CUDA_ARCHS +
         "\", \"cuda_runtime\": " + std::to_string(CUDART_VERSION) +
         ", \"torch\": \"" + FRSPEC_TORCH_VERSION + "\"}";
}

}  // namespace

TORCH_LIBRARY(frspec_cuda, m) {
  m.def("build_info() -> str", &build_info);
  m.def("tree_attention_num_splits(int batch, int nodes, int q_heads, int kv_heads, int head_dim, int max_len,"
        " bool bf16, int num_splits=0, int impl=0) -> int",
        &tree_attention_num_splits);
  m.def("merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b)"
        " -> (Tensor out, Tensor lse)");
  m.def("fr_lm_head_topk(Tensor hidden, Tensor weight, Tensor ids, int k)"
        " -> (Tensor token_ids, Tensor logprobs)");
  m.def("build_dynamic_tree(Tensor hist_tokens, Tensor hist_parents, Tensor hist_scores, Tensor root_tokens,"
        " Tensor cache_len, int num_nodes) -> (Tensor tokens, Tensor parents, Tensor depth, Tensor positions,"
        " Tensor history_index, Tensor mask)");
  m.def("verify_tree_greedy(Tensor tokens, Tensor parents, Tensor target_argmax)"
        " -> (Tensor accept_len, Tensor accepted, Tensor bonus)");
  m.def("verify_tree_sampling(Tensor tokens, Tensor parents, Tensor probs, Tensor uniforms)"
        " -> (Tensor accept_len, Tensor accepted, Tensor bonus)");
  m.def("tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_len, Tensor mask, float scale,"
        " int num_splits=0, int impl=0, int tree_len=0) -> (Tensor out, Tensor lse)");
  m.def("apb_attention(Tensor q, Tensor k, Tensor v, int anchor_len, int passing_len, float scale, int impl=0)"
        " -> (Tensor out, Tensor lse)");
  m.def("compact_kv_cache(Tensor(a!) kv_cache, Tensor(b!) cache_len, Tensor accepted, Tensor accept_len,"
        " Tensor(c!) counter) -> ()");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor normed, Tensor sum)");
  m.def("silu_and_mul(Tensor gate_up) -> Tensor");
  m.def("rope_qk_store_kv(Tensor qkv, Tensor positions, Tensor inv_freq, Tensor slots, Tensor(a!) k_cache,"
        " Tensor(b!) v_cache, int num_heads) -> Tensor q");
  m.def("gemv(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor");
  m.def("gemv_silu_and_mul(Tensor x, Tensor gate_up_weight) -> Tensor");
  m.def("rms_norm_gemv(Tensor x, Tensor? residual, Tensor norm_weight, float eps, Tensor weight, Tensor? bias,"
        " bool silu_and_mul) -> (Tensor y, Tensor sum)");
  m.def("set_programmatic_launch(bool enabled) -> bool", &set_programmatic_launch);
  m.def("set_gemv_l2_prefetch_bytes(int budget) -> int", &set_gemv_l2_prefetch_bytes);
}

TORCH_LIBRARY_IMPL(frspec_cuda, CUDA, m) {
  m.impl("merge_attention_states", &merge_attention_states);
  m.impl("fr_lm_head_topk", &fr_lm_head_topk);
  m.impl("build_dynamic_tree", &build_dynamic_tree);
  m.impl("verify_tree_greedy", &verify_tree_greedy);
  m.impl("verify_tree_sampling", &verify_tree_sampling);
  m.impl("compact_kv_cache", &compact_kv_cache);
  m.impl("tree_attention", &tree_attention);
  m.impl("apb_attention", &apb_attention);
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("rope_qk_store_kv", &rope_qk_store_kv);
  m.impl("gemv", &gemv);
  m.impl("gemv_silu_and_mul", &gemv_silu_and_mul);
  m.impl("rms_norm_gemv", &rms_norm_gemv);
}
