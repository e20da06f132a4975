// Pieces of the Hopper (wgmma, sm_90a) attention kernels that APB host attention and tree
// attention share: the 128B-swizzled [128 x 128] tile layout, a cp.async tile copy into it,
// and the per-tile online softmax on a 64 x 128 accumulator in wgmma's register layout
// (each thread holds rows row_base and row_base + 8; 4 values per 8 columns: s[4 jb + 2 e + c]
// is row e, column 8 jb + 2 tig + c).
#pragma once

#include "frspec/mma.cuh"
#include "frspec/wgmma.cuh"

namespace frspec {

constexpr int kWgSlab = 128 * 128;   // bytes of one [128 x 64] 16-bit slab
constexpr int kWgTile = 2 * kWgSlab;  // [128 x 128]: two slabs

// Copy a [128 rows x 128] tile (rows from `src_row(r)`, 16-bit elements) into the swizzled
// layout with cp.async, kThreads threads taking turns; rows with ok(r) false are zero-filled.
template <typename T, int kThreads, typename RowPtr, typename RowOk>
__device__ __forceinline__ void wg_load_tile(uint8_t* dst, RowPtr src_row, RowOk ok, int tid = threadIdx.x) {
  for (int c = tid; c < 128 * 16; c += kThreads) {
    const int r = c >> 4, chunk = c & 15;
    const bool valid = ok(r);
    const T* src = src_row(valid ? r : 0) + chunk * 8;
    cp_async_16(dst + (chunk >> 3) * kWgSlab + swizzle_128b(r, chunk & 7), src, valid ? 16 : 0);
  }
}

// S = Q K^T for one warpgroup: its 64 rows of the swizzled Q tile (starting `q_row_bytes`
// into each slab) x one K tile of 2 NS keys (128 or 176; kD / 64 [2 NS x 64] slabs, back to
// back), head_dim kD (128 or 64: 8 or 4 k steps), issued as one committed wgmma group (not
// waited for).
template <typename T, int NS, int kD = 128>
__device__ __forceinline__ void wg_issue_qk(float (&s)[NS], const uint8_t* q_s, int q_row_bytes, const uint8_t* k_tile) {
  static_assert(NS == 64 || NS == 88, "128- or 176-key tiles");
  static_assert(kD == 64 || kD == 128, "head_dim 64 or 128");
  constexpr int kKSlab = 2 * NS * 128;  // bytes of one 64-column slab of the K tile
  wgmma_fence();
  wgmma_fence_operands(s);
  // One descriptor per operand, its address field (bits 0-13: bytes >> 4) advanced per k
  // step; no carry leaves the field (shared memory < 256 KB). Rebuilding each descriptor
  // cost ~70 more instructions per tile in the ping-pong issue window.
  const uint64_t da0 = wgmma_desc(q_s + q_row_bytes, 16, 1024), db0 = wgmma_desc(k_tile, 16, 1024);
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    const uint64_t step_a = static_cast<uint64_t>(((kk / 4) * kWgSlab + (kk % 4) * 32) >> 4);
    const uint64_t step_b = static_cast<uint64_t>(((kk / 4) * kKSlab + (kk % 4) * 32) >> 4);
    if constexpr (NS == 64)
      wgmma_m64n128k16_ss<T>(s, da0 + step_a, db0 + step_b, kk > 0);
    else
      wgmma_m64n176k16_ss<T>(s, da0 + step_a, db0 + step_b, kk > 0);
  }
  wgmma_commit();
}

// O += P V for one warpgroup over one V tile of 16 KS keys, 16 keys per step; P from
// registers (wg_pack_p), V the transposed (MN-major) operand. O is [64 x head_dim]: 64
// accumulators per thread at head_dim 128 (V two 64-column slabs), 32 at 64 (one slab). One
// committed group, not waited for.
template <typename T, int KS, int NO>
__device__ __forceinline__ void wg_issue_pv(float (&o)[NO], const uint32_t (&pf)[KS][4], const uint8_t* v_tile) {
  static_assert(NO == 64 || NO == 32, "head_dim 128 or 64");
  wgmma_fence();
  wgmma_fence_operands(o);
  // leading byte offset: from one 64-column slab to the next; advanced per k step, as in wg_issue_qk
  const uint64_t db0 = wgmma_desc(v_tile, 16 * KS * 128, 1024);
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    const uint64_t desc = db0 + static_cast<uint64_t>((kk * 16 * 128) >> 4);
    if constexpr (NO == 64)
      wgmma_m64n128k16_rs_tb<T>(o, pf[kk], desc, 1);
    else
      wgmma_m64n64k16_rs_tb<T>(o, pf[kk], desc, 1);
  }
  wgmma_commit();
}

// Wait for this warpgroup's outstanding wgmma (its P V), then, if `release`, lane 0 of each
// warp arrives on the V stage's empty barrier (it counts one arrival per consumer warp).
template <int NO>
__device__ __forceinline__ void wg_wait_pv(float (&o)[NO], uint64_t* v_empty, bool release) {
  wgmma_wait<0>();
  wgmma_fence_operands(o);
  __syncwarp();
  if (release && threadIdx.x % 32 == 0) mbar_arrive(v_empty);
}

// o *= alpha per row (the online-softmax rescale).
template <int NO>
__device__ __forceinline__ void wg_rescale(float (&o)[NO], const float (&alpha)[2]) {
#pragma unroll
  for (int jb = 0; jb < NO / 4; ++jb) {
    o[4 * jb + 0] *= alpha[0];
    o[4 * jb + 1] *= alpha[0];
    o[4 * jb + 2] *= alpha[1];
    o[4 * jb + 3] *= alpha[1];
  }
}

// P (the exponentiated scores) as the A register fragments of the k16 steps of P V.
template <typename T, int NS>
__device__ __forceinline__ void wg_pack_p(const float (&s)[NS], uint32_t (&pf)[NS / 8][4]) {
#pragma unroll
  for (int kk = 0; kk < NS / 8; ++kk) {
    pf[kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
    pf[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
    pf[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
    pf[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

// Online softmax of one tile of raw scores s (masked entries -inf) in base 2, the scale
// (softmax scale * log2 e) folded into one FMA per score: s becomes P, m and l (per row,
// base-2 running max and partial sum over this thread's columns) advance, alpha is the
// factor the accumulator must be rescaled by.
template <int NS>
__device__ __forceinline__ void wg_online_softmax_fma(float (&s)[NS], float (&m)[2], float (&l)[2],
                                                      float (&alpha)[2], float scale_log2) {
  // Both rows at once and two chains per row for the max and the sum: one chain per row
  // is NS / 4 dependent operations (H100, 2026-11-26: ~1% at 32K, B = 1 N = 128 109.9 ->
  // 108.5 us; bench/NOTES.md tree v10).
  float mx[2][2];
#pragma unroll
  for (int e = 0; e < 2; ++e)
#pragma unroll
    for (int c = 0; c < 2; ++c) mx[e][c] = fmaxf(s[4 * c + 2 * e], s[4 * c + 2 * e + 1]);
#pragma unroll
  for (int jb = 2; jb < NS / 4; ++jb)
#pragma unroll
    for (int e = 0; e < 2; ++e) mx[e][jb & 1] = fmaxf(mx[e][jb & 1], fmaxf(s[4 * jb + 2 * e], s[4 * jb + 2 * e + 1]));
  float ref[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    float x = fmaxf(mx[e][0], mx[e][1]);
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
    const float m_new = fmaxf(m[e], x * scale_log2);
    ref[e] = m_new == -INFINITY ? 0.f : m_new;
    alpha[e] = fast_exp2(m[e] - ref[e]);
    m[e] = m_new;
  }
  float sum[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
  for (int jb = 0; jb < NS / 4; ++jb)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      s[4 * jb + 2 * e] = fast_exp2(fmaf(s[4 * jb + 2 * e], scale_log2, -ref[e]));
      s[4 * jb + 2 * e + 1] = fast_exp2(fmaf(s[4 * jb + 2 * e + 1], scale_log2, -ref[e]));
      sum[e][jb & 1] += s[4 * jb + 2 * e] + s[4 * jb + 2 * e + 1];
    }
#pragma unroll
  for (int e = 0; e < 2; ++e) l[e] = l[e] * alpha[e] + (sum[e][0] + sum[e][1]);
}

}  // namespace frspec
