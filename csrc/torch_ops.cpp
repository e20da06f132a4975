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
  m.def("merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b)"
        " -> (Tensor out, Tensor lse)");
  m.def("fr_lm_head_topk(Tensor hidden, Tensor weight, Tensor ids, int k)"
        " -> (Tensor token_ids, Tensor logprobs)");
}

TORCH_LIBRARY_IMPL(frspec_cuda, CUDA, m) {
  m.impl("merge_attention_states", &merge_attention_states);
  m.impl("fr_lm_head_topk", &fr_lm_head_topk);
}
