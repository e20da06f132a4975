// Merging partial attention states by their log-sum-exp (LSE).
//
// Attention over a key set S = A u B (disjoint) is
//   out = (e^{lse_a} out_a + e^{lse_b} out_b) / (e^{lse_a} + e^{lse_b}),
//   lse = log(e^{lse_a} + e^{lse_b}).
// We never form e^{lse}: with m = max(lse_a, lse_b) and e = exp(-|lse_a - lse_b|) <= 1,
// the larger side weighs 1/(1+e) (= sigmoid of the gap), the smaller e/(1+e), and
// lse = m + log1p(e). Nothing overflows, and an empty side (lse = -inf) gets e = 0,
// so the result is the other side bit for bit; its `out` is not even multiplied in
// (an empty partial may hold NaN from 0/0, and 0 * NaN is NaN).
#pragma once

#include "frspec/common.cuh"

namespace frspec {

struct MergeWeights {
  float w_a, w_b, lse;
  int only;  // 0: blend, 1: copy a, 2: copy b, 3: both empty
};

__device__ __forceinline__ MergeWeights merge_weights(float lse_a, float lse_b) {
  MergeWeights w;
  const float m = fmaxf(lse_a, lse_b);
  if (m == -INFINITY) {  // both sides empty (NaN compares false and falls through)
    w.w_a = w.w_b = 0.f;
    w.lse = -INFINITY;
    w.only = 3;
    return w;
  }
  const float e = __expf(-fabsf(lse_a - lse_b));
  const float big = 1.f / (1.f + e);
  const float small = e * big;
  const bool a_is_big = lse_a >= lse_b;
  w.w_a = a_is_big ? big : small;
  w.w_b = a_is_big ? small : big;
  w.lse = m + log1pf(e);
  w.only = e == 0.f ? (a_is_big ? 1 : 2) : 0;
  return w;
}

// One thread merges VEC consecutive elements of one row; blockDim = (head_dim / VEC,
// rows_per_block). The per-row LSE load is a broadcast within the row's threads.
template <typename T, int VEC>
__global__ void merge_attention_states_kernel(const T* __restrict__ out_a,
                                              const float* __restrict__ lse_a,
                                              const T* __restrict__ out_b,
                                              const float* __restrict__ lse_b,
                                              T* __restrict__ out, float* __restrict__ lse,
                                              int64_t rows, int head_dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= rows) return;
  const MergeWeights w = merge_weights(__ldg(lse_a + row), __ldg(lse_b + row));
  const int64_t base = row * head_dim;
  for (int col = threadIdx.x * VEC; col < head_dim; col += blockDim.x * VEC) {
    Vec<T, VEC> r;
    if (w.only == 3) {
#pragma unroll
      for (int i = 0; i < VEC; ++i) r.v[i] = from_float<T>(0.f);
    } else if (w.only == 1) {
      r.load_nc(out_a + base + col);
    } else if (w.only == 2) {
      r.load_nc(out_b + base + col);
    } else {
      Vec<T, VEC> a, b;
      a.load_nc(out_a + base + col);
      b.load_nc(out_b + base + col);
#pragma unroll
      for (int i = 0; i < VEC; ++i)
        r.v[i] = from_float<T>(w.w_a * to_float(a.v[i]) + w.w_b * to_float(b.v[i]));
    }
    r.store(out + base + col);
  }
  if (threadIdx.x == 0) lse[row] = w.lse;
}

}  // namespace frspec
