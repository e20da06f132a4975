// Tensor-core and async-copy building blocks shared by the kernels (sm_80+ PTX).
#pragma once

#include <type_traits>

#include "frspec/common.cuh"

namespace frspec {

// D += A * B for one m16n8k16 tile, fp32 accumulate, fp16 or bf16 operands.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                          uint32_t a3, uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// 16-byte global -> shared copy that bypasses registers and L1; src_bytes = 0 zero-fills.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* src, int src_bytes) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// Sums each of a thread's two row values (rows g and g + 8 of an m16n8 or wgmma tile) over
// the 4 threads of its quad, which share those rows.
__device__ __forceinline__ void quad_sum(float (&v)[2]) {
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    v[e] += __shfl_xor_sync(0xffffffffu, v[e], 1);
    v[e] += __shfl_xor_sync(0xffffffffu, v[e], 2);
  }
}

// S = Q K^T for a warp's 16 query rows and one tile of kKeys keys: qf holds Q's A fragments
// (D / 16 of them), ks the key tile [kKeys, D] in shared memory (row stride `stride`
// elements); s gets the raw scores in the m16n8 accumulator layout. Shared by the
// tree-attention and APB mma.sync kernels.
template <typename T, int kKeys, int D>
__device__ __forceinline__ void qk_tile(float (&s)[kKeys / 8][4], const uint32_t (&qf)[D / 16][4], const T* ks,
                                        int stride, int lane) {
#pragma unroll
  for (int nt = 0; nt < kKeys / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; nt += 2) {
      const int mi = lane / 8, r = lane % 8;
      uint32_t kb[4];
      ldmatrix_x4(kb, ks + ((nt + mi / 2) * 8 + r) * stride + kk * 16 + (mi % 2) * 8);
      mma_16816<T>(s[nt], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], kb[0], kb[1]);
      mma_16816<T>(s[nt + 1], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], kb[2], kb[3]);
    }
}

// One key tile of the FA2-style online softmax for a warp's 16 query rows (rows g and g + 8
// of the m16n8 accumulator layout; a row's 4 quad threads share it): s holds the tile's
// base-2 scaled scores (-inf where masked); updates the running max m and the quad-partial
// sum l, rescales o, then o += P V with V [kKeys, D] in shared memory (row stride `stride`
// elements). Shared by the tree-attention and APB mma.sync kernels.
template <typename T, int kKeys, int D>
__device__ __forceinline__ void online_softmax_pv_tile(float (&s)[kKeys / 8][4], float (&m)[2], float (&l)[2],
                                                       float (&o)[D / 8][4], const T* vs, int stride, int lane) {
  float alpha[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    float mx = m[e];
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * e], s[nt][2 * e + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float ref = mx == -INFINITY ? 0.f : mx;  // all masked so far: avoid inf - inf
    alpha[e] = fast_exp2(m[e] - ref);
    m[e] = mx;
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < kKeys / 8; ++nt) {
      s[nt][2 * e] = fast_exp2(s[nt][2 * e] - ref);
      s[nt][2 * e + 1] = fast_exp2(s[nt][2 * e + 1] - ref);
      sum += s[nt][2 * e] + s[nt][2 * e + 1];
    }
    l[e] = l[e] * alpha[e] + sum;  // quad-partial; reduced at the end
  }
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    o[nt][0] *= alpha[0];
    o[nt][1] *= alpha[0];
    o[nt][2] *= alpha[1];
    o[nt][3] *= alpha[1];
  }
  // O += P V: P's accumulator layout is the A fragment layout of the next MMA.
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    const uint32_t a0 = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    const uint32_t a1 = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    const uint32_t a2 = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    const uint32_t a3 = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
    for (int nt = 0; nt < D / 8; nt += 2) {
      const int mi = lane / 8, r = lane % 8;
      const T* addr = vs + (kk * 16 + (mi % 2) * 8 + r) * stride + (nt + mi / 2) * 8;
      uint32_t vb[4];
      ldmatrix_x4_trans(vb, addr);
      mma_16816<T>(o[nt], a0, a1, a2, a3, vb[0], vb[1]);
      mma_16816<T>(o[nt + 1], a0, a1, a2, a3, vb[2], vb[3]);
    }
  }
}

}  // namespace frspec
