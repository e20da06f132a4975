// Fused pieces of a Llama decoder layer, so that a decode step is a handful of kernels per
// layer instead of ~40 (each tiny kernel costs ~1-2 us even inside a CUDA graph; 32 layers x
// 40 of them would add >1 ms to a 5 ms weight-read floor): element-wise kernels, and the
// one-row GEMV of a batch-1 decode step with the norm / SiLU folded into it.
// Semantics in python/frspec_cuda/reference/decoder.py; rounding follows PyTorch eager:
// every intermediate that eager PyTorch stores in the model dtype is rounded here too,
// and the RoPE products are computed without FMA contraction, as eager's separate kernels do.
#pragma once

#include "frspec/common.cuh"

namespace frspec {

// Block-wide sum for up to 1024 threads (blockDim.x a multiple of 32).
__device__ __forceinline__ float block_sum(float v, float* scratch /* [32] */) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / 32;
  v = lane < warps ? scratch[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per row of H. With `residual` (non-null): sum = round(x + residual) is written
// to `sum_out` and normalised; otherwise x is. out = round(round(s * rsqrt(mean(s^2) + eps))
// * weight), the HF LlamaRMSNorm rounding. VEC elements per access (8 = 16 bytes, or 1).
// The row is held in registers between the two passes when it fits (H <= VEC * threads *
// kMaxChunks), else re-read.
template <typename T, int VEC>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ residual,
                                const T* __restrict__ weight, T* __restrict__ out,
                                T* __restrict__ sum_out, int H, float eps) {
  __shared__ float scratch[32];
  pdl_launch_dependents();
  pdl_wait();
  const int64_t row = blockIdx.x;
  const T* xr = x + row * H;
  const T* rr = residual ? residual + row * H : nullptr;
  T* sr = sum_out ? sum_out + row * H : nullptr;
  float ss = 0.f;
  for (int i = threadIdx.x * VEC; i < H; i += blockDim.x * VEC) {
    Vec<T, VEC> a;
    a.load(xr + i);
    if (rr) {
      Vec<T, VEC> b;
      b.load(rr + i);
#pragma unroll
      for (int j = 0; j < VEC; ++j) a.v[j] = from_float<T>(to_float(a.v[j]) + to_float(b.v[j]));
      a.store(sr + i);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float f = to_float(a.v[j]);
      ss += f * f;
    }
  }
  const float r = rsqrtf(block_sum(ss, scratch) / H + eps);
  // Second pass reads back the (already rounded) sum this thread wrote: same thread, same
  // addresses, so no synchronisation is needed.
  const T* src = rr ? sr : xr;
  T* dst = out + row * H;
  for (int i = threadIdx.x * VEC; i < H; i += blockDim.x * VEC) {
    Vec<T, VEC> a, w;
    a.load(src + i);
    w.load(weight + i);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const T normed = from_float<T>(to_float(a.v[j]) * r);
      a.v[j] = from_float<T>(to_float(normed) * to_float(w.v[j]));
    }
    a.store(dst + i);
  }
}

// out[r, i] = round(round(silu(g)) * u) with g = gate_up[r, i], u = gate_up[r, I + i].
template <typename T, int VEC>
__global__ void silu_and_mul_kernel(const T* __restrict__ gate_up, T* __restrict__ out, int64_t rows,
                                    int I) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t per_row = I / VEC;
  const int64_t total = rows * per_row;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = idx / per_row;
    const int i = static_cast<int>(idx % per_row) * VEC;
    Vec<T, VEC> g, u;
    g.load_nc(gate_up + r * 2 * I + i);
    u.load_nc(gate_up + r * 2 * I + I + i);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float gf = to_float(g.v[j]);
      const T s = from_float<T>(gf / (1.f + expf(-gf)));
      g.v[j] = from_float<T>(to_float(s) * to_float(u.v[j]));
    }
    g.store(out + r * I + i);
  }
}

// One block per (token, head) of the fused projection qkv [tokens, Hq + 2 Hkv, D], D / 2
// threads (thread i owns the rotate-half pair (i, i + D/2)). Query heads are rotated into
// q_out [tokens, Hq, D]; key heads are rotated and value heads copied into the caches
// [B, L, Hkv, D] at slot slots[token] of sequence token / T. Tokens whose slot lies outside
// [0, L) write nothing to the caches (their q is still produced).
template <typename T>
__global__ void rope_qk_store_kv_kernel(const T* __restrict__ qkv, const int64_t* __restrict__ positions,
                                        const float* __restrict__ inv_freq, const int64_t* __restrict__ slots,
                                        T* __restrict__ q_out, T* __restrict__ k_cache, T* __restrict__ v_cache,
                                        int T_len, int Hq, int Hkv, int D, int64_t L) {
  pdl_launch_dependents();
  pdl_wait();
  const int64_t token = blockIdx.x;
  const int head = blockIdx.y;
  const int i = threadIdx.x, half = D / 2;
  const T* src = qkv + (token * (Hq + 2 * Hkv) + head) * D;
  if (head >= Hq + Hkv) {  // value head: copy
    const int64_t slot = slots[token];
    if (slot < 0 || slot >= L) return;
    const int64_t b = token / T_len;
    T* dst = v_cache + ((b * L + slot) * Hkv + (head - Hq - Hkv)) * D;
    dst[i] = src[i];
    dst[i + half] = src[i + half];
    return;
  }
  // angle = float(pos) * inv_freq, then x * cos + rotate_half(x) * sin, each product and
  // the sum rounded separately (no FMA), as the eager reference computes it
  const float angle = __fmul_rn(static_cast<float>(positions[token]), inv_freq[i]);
  const float c = cosf(angle), s = sinf(angle);
  const float x1 = to_float(src[i]), x2 = to_float(src[i + half]);
  const T y1 = from_float<T>(__fadd_rn(__fmul_rn(x1, c), __fmul_rn(-x2, s)));
  const T y2 = from_float<T>(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
  T* dst;
  if (head < Hq) {
    dst = q_out + (token * Hq + head) * D;
  } else {
    const int64_t slot = slots[token];
    if (slot < 0 || slot >= L) return;
    const int64_t b = token / T_len;
    dst = k_cache + ((b * L + slot) * Hkv + (head - Hq)) * D;
  }
  dst[i] = y1;
  dst[i + half] = y2;
}

// ---------------------------------------------------------------------------- GEMV
// y[n] = round(sum_k W[n, k] x[k] (+ bias[n])) for one input row: the matrix products of a
// batch-1 decode step, which read each weight once and are bound by memory bandwidth.
// One warp per output row; each lane streams 16-byte chunks of the row with kGemvUnroll
// loads in flight (no L1 allocation: the weights are read once per step and overflow L2).
// Launched with PDL: a warp loads its row's first chunks (weights, which no kernel writes)
// before pdl_wait(), so the start of the stream overlaps the previous kernel's tail.
// Requires K % 8 == 0 and 16-byte aligned x / W.
constexpr int kGemvWarps = 8;
constexpr int kGemvUnroll = 4;

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

template <typename T>
__device__ __forceinline__ float dot8(const uint4& a, const uint4& b) {
  const T* x = reinterpret_cast<const T*>(&a);
  const T* y = reinterpret_cast<const T*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) s = fmaf(to_float(x[i]), to_float(y[i]), s);
  return s;
}

// The RMSNorm in front of a GEMV (kNorm): every block normalises the input row itself into
// shared memory -- s = round(x + residual) (block 0 writes s to sum_out), then
// round(round(s * rsqrt(mean(s^2) + eps)) * norm_weight), rms_norm_kernel's roundings --
// so the residual add + norm costs no kernel of its own (a few us of latency each).
struct GemvNorm {
  const void* residual;     // may be null (then s = x)
  const void* weight;       // [K]
  void* sum_out;            // [K], written when residual is set
  float eps;
};
constexpr int kGemvNormMaxK = 16384;  // the normalised row in dynamic smem: 32 KB, under the 48 KB default

// kSiluMul: w is the fused [gate; up] projection [2N, K] and y[n] = silu(gate[n]) * up[n]
// with eager's roundings (each product rounded, then silu, then the product): the MLP's
// gate/up GEMV and silu_and_mul in one kernel; a warp streams both of its rows at once.
// l2_prefetch_bytes (a multiple of 16, <= the row): each warp also asks for the first bytes
// of its rows to be brought into L2 (cp.async.bulk.prefetch) before pdl_wait, so a GEMV
// queued behind latency-bound kernels (RoPE, attention) streams much of its weight while
// they run. The host caps it so all prefetched rows fit in L2 (set_gemv_l2_prefetch_bytes;
// off by default: it measured slower).
template <typename T, bool kSiluMul, bool kNorm>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                               const T* __restrict__ bias, T* __restrict__ y,
                                                               int N, int K, const GemvNorm norm,
                                                               unsigned l2_prefetch_bytes) {
  constexpr int R = kSiluMul ? 2 : 1;  // weight rows per output
  extern __shared__ uint4 gemv_xs[];   // kNorm: the normalised row, K / 8 chunks
  __shared__ float scratch[32];
  pdl_launch_dependents();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = blockIdx.x * kGemvWarps + warp;
  const int chunks = K / 8;
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r)
    wr[r] = reinterpret_cast<const uint4*>(w + (static_cast<int64_t>(r) * N + (n < N ? n : 0)) * K);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (l2_prefetch_bytes && n < N && lane < R)  // weights only: safe before pdl_wait
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(wr[lane]), "r"(l2_prefetch_bytes) : "memory");
#endif
  uint4 wv[R][kGemvUnroll];
#pragma unroll
  for (int u = 0; u < kGemvUnroll; ++u)  // weights only: safe before pdl_wait
#pragma unroll
    for (int r = 0; r < R; ++r)
      if (n < N && lane + 32 * u < chunks) wv[r][u] = load_stream(wr[r] + lane + 32 * u);
  pdl_wait();
  const uint4* xv = reinterpret_cast<const uint4*>(x);
  if constexpr (kNorm) {
    using V = Vec<T, 8>;
    const T* res = static_cast<const T*>(norm.residual);
    float ss = 0.f;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
      V a;
      a.load(x + 8 * c);
      if (res) {
        V b;
        b.load(res + 8 * c);
#pragma unroll
        for (int e = 0; e < 8; ++e) a.v[e] = from_float<T>(to_float(a.v[e]) + to_float(b.v[e]));
        if (blockIdx.x == 0) a.store(static_cast<T*>(norm.sum_out) + 8 * c);
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) ss += to_float(a.v[e]) * to_float(a.v[e]);
      gemv_xs[c] = *reinterpret_cast<const uint4*>(&a);
    }
    const float rs = rsqrtf(block_sum(ss, scratch) / K + norm.eps);
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {  // the chunks this thread wrote
      V a = *reinterpret_cast<const V*>(&gemv_xs[c]), g;
      g.load(static_cast<const T*>(norm.weight) + 8 * c);
#pragma unroll
      for (int e = 0; e < 8; ++e)
        a.v[e] = from_float<T>(to_float(from_float<T>(to_float(a.v[e]) * rs)) * to_float(g.v[e]));
      gemv_xs[c] = *reinterpret_cast<const uint4*>(&a);
    }
    __syncthreads();
    xv = gemv_xs;
  }
  if (n >= N) return;
  auto load_x = [&](int idx) { return kNorm ? xv[idx] : __ldg(xv + idx); };
  float acc[R] = {};
  int c = lane;
  // the chunks prefetched above
#pragma unroll
  for (int u = 0; u < kGemvUnroll; ++u) {
    if (c + 32 * u < chunks) {
      const uint4 xu = load_x(c + 32 * u);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] += dot8<T>(wv[r][u], xu);
    }
  }
  c += 32 * kGemvUnroll;
  for (; c + 32 * (kGemvUnroll - 1) < chunks; c += 32 * kGemvUnroll) {
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r) wv[r][u] = load_stream(wr[r] + c + 32 * u);
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const uint4 xu = load_x(c + 32 * u);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] += dot8<T>(wv[r][u], xu);
    }
  }
  for (; c < chunks; c += 32) {
    const uint4 xu = load_x(c);
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] += dot8<T>(load_stream(wr[r] + c), xu);
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
    for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
  if (lane != 0) return;
  if constexpr (kSiluMul) {
    const float g = to_float(from_float<T>(acc[0]));
    const T s = from_float<T>(g / (1.f + expf(-g)));
    y[n] = from_float<T>(to_float(s) * to_float(from_float<T>(acc[R - 1])));
  } else {
    y[n] = from_float<T>(bias ? acc[0] + to_float(bias[n]) : acc[0]);
  }
}

}  // namespace frspec
