// The one torch binding of frspec_cuda: op schemas (TORCH_LIBRARY), CUDA
// implementations that validate their inputs with TORCH_CHECK and call the
// framework-free launchers of csrc/include/frspec/ops.h on the current stream.
// CPU tensors never reach this file: python/frspec_cuda/ops.py runs the PyTorch
// reference for them.
#include <ATen/core/Tensor.h>
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
}

TORCH_LIBRARY_IMPL(frspec_cuda, CUDA, m) {
  m.impl("merge_attention_states", &merge_attention_states);
}
