// APB host attention on Hopper tensor cores (wgmma, sm_90a), head_dim 128. Same layout
// and tile skipping as the mma.sync kernel in apb_attention.cuh; the difference is the
// matrix engine: a CTA of two warpgroups owns 128 query rows (64 each) and walks 128-key
// tiles. S = Q K^T is one m64n128 wgmma chain per warpgroup with Q and K read straight
// from 128B-swizzled shared memory; O += P V takes P from registers (the S accumulators,
// rescaled and rounded, are already in wgmma's A-fragment layout) and V from shared
// memory as a transposed (MN-major) operand, so V is never transposed by hand. K/V tiles
// are double-buffered with cp.async.
#pragma once

#include <cuda.h>  // CUtensorMap (the type only; no driver library linked)

#include "frspec/apb_attention.cuh"
#include "frspec/attention_sm90.cuh"

namespace frspec {

constexpr int kApbWgRows = 128;  // 2 warpgroups x 64 rows
constexpr int kApbWgKeys = 128;
constexpr int kApbWgThreads = 256;
constexpr size_t kApbWgSmemBytes = 5 * kWgTile + 1024;    // Q, K x 2, V x 2 (+ alignment)

// The epilogue: l summed over the quad, out rows (D = 128) normalised and stored, lse
// (natural log) written; rows past q_last are skipped.
template <typename T>
__device__ __forceinline__ void apb_wg_store_rows(const float (&o)[64], const float (&m)[2], float (&l)[2],
                                                  const ApbParams& p, int hq, int row_base, int q_last, int tig) {
  constexpr int D = 128;
  quad_sum(l);
  const int64_t q_stride = static_cast<int64_t>(p.Hq) * D;
  T* og = static_cast<T*>(p.out) + static_cast<int64_t>(hq) * D;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int q = row_base + e * 8;
    if (q > q_last) continue;
    const float inv = l[e] > 0.f ? 1.f / l[e] : 0.f;
    T* orow = og + static_cast<int64_t>(q) * q_stride;
#pragma unroll
    for (int jb = 0; jb < 16; ++jb)
      *reinterpret_cast<uint32_t*>(orow + jb * 8 + 2 * tig) = pack2<T>(o[4 * jb + 2 * e] * inv, o[4 * jb + 2 * e + 1] * inv);
    if (tig == 0) {
      constexpr float kLn2 = 0.69314718055994531f;
      p.lse[static_cast<int64_t>(q) * p.Hq + hq] = l[e] > 0.f ? (m[e] + log2f(l[e])) * kLn2 : -INFINITY;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kApbWgThreads, 1) apb_attention_wgmma_kernel(const ApbParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = 128;
  extern __shared__ uint8_t apb_wg_smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(apb_wg_smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* q_s = smem;
  uint8_t* k_s = smem + kWgTile;      // 2 stages
  uint8_t* v_s = smem + 3 * kWgTile;  // 2 stages

  const int wg = warpgroup_index(), warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, tig = lane % 4;
  const int hq = blockIdx.x, hk = hq / (p.Hq / p.Hkv);
  const int tile = p.q_tiles - 1 - static_cast<int>(blockIdx.y);
  const int q0 = tile * kApbWgRows, q_last = min(q0 + kApbWgRows, p.Tq) - 1;
  const int A = p.anchor_len, P = p.passing_len;
  const int64_t q_stride = static_cast<int64_t>(p.Hq) * D, kv_stride = static_cast<int64_t>(p.Hkv) * D;
  const T* qg = static_cast<const T*>(p.q) + static_cast<int64_t>(hq) * D;
  const T* kg = static_cast<const T*>(p.k) + static_cast<int64_t>(hk) * D;
  const T* vg = static_cast<const T*>(p.v) + static_cast<int64_t>(hk) * D;

  int kbeg, kend;
  apb_key_range(q0, q_last, A, P, kbeg, kend);
  const int n_tiles = (kend - kbeg + kApbWgKeys - 1) / kApbWgKeys;

  wg_load_tile<T, kApbWgThreads>(q_s, [&](int r) { return qg + static_cast<int64_t>(q0 + r) * q_stride; },
                      [&](int r) { return q0 + r <= q_last; });
  auto load_kv = [&](int j, int buf) {
    const int k0 = kbeg + j * kApbWgKeys;
    auto ok = [&](int r) { return k0 + r < kend; };
    wg_load_tile<T, kApbWgThreads>(k_s + buf * kWgTile, [&](int r) { return kg + static_cast<int64_t>(k0 + r) * kv_stride; }, ok);
    wg_load_tile<T, kApbWgThreads>(v_s + buf * kWgTile, [&](int r) { return vg + static_cast<int64_t>(k0 + r) * kv_stride; }, ok);
    cp_async_commit();
  };
  load_kv(n_tiles - 1, 0);  // (the Q copies join this first group)

  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row_base = q0 + wg * 64 + warp * 16 + g;  // this thread's rows: row_base, row_base + 8

  int buf = 0;
  for (int j = n_tiles - 1; j >= 0; --j) {
    if (j > 0) {
      load_kv(j - 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    fence_proxy_async_smem();  // cp.async writes -> visible to the tensor cores' async proxy
    __syncthreads();
    const int k0 = kbeg + j * kApbWgKeys;

    // S = Q K^T for this warpgroup's 64 rows x 128 keys.
    float s[64];
    wg_issue_qk<T>(s, q_s, wg * 64 * 128, k_s + buf * kWgTile);
    wgmma_wait<0>();
    wgmma_fence_operands(s);

    const bool full = k0 + kApbWgKeys - 1 <= P + q0 && (q0 >= A || k0 >= P) && k0 + kApbWgKeys <= kend;
    if (full) {
#pragma unroll
      for (int i = 0; i < 64; ++i) s[i] *= p.scale_log2;
    } else {
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        const int key = k0 + (i / 4) * 8 + 2 * tig + (i & 1);
        const int q = row_base + ((i >> 1) & 1) * 8;
        const bool ok = key < kend && key <= P + q && (q >= A || key >= P);
        s[i] = ok ? s[i] * p.scale_log2 : -INFINITY;
      }
    }
    float alpha[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float mx = m[e];
#pragma unroll
      for (int jb = 0; jb < 16; ++jb) mx = fmaxf(mx, fmaxf(s[4 * jb + 2 * e], s[4 * jb + 2 * e + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float ref = mx == -INFINITY ? 0.f : mx;
      alpha[e] = fast_exp2(m[e] - ref);
      m[e] = mx;
      float sum = 0.f;
#pragma unroll
      for (int jb = 0; jb < 16; ++jb) {
        s[4 * jb + 2 * e] = fast_exp2(s[4 * jb + 2 * e] - ref);
        s[4 * jb + 2 * e + 1] = fast_exp2(s[4 * jb + 2 * e + 1] - ref);
        sum += s[4 * jb + 2 * e] + s[4 * jb + 2 * e + 1];
      }
      l[e] = l[e] * alpha[e] + sum;
    }
    wg_rescale(o, alpha);
    // O += P V, 16 keys per step; V is the transposed (MN-major) B operand.
    uint32_t pf[8][4];
    wg_pack_p<T>(s, pf);
    wg_issue_pv<T>(o, pf, v_s + buf * kWgTile);
    wgmma_wait<0>();
    wgmma_fence_operands(o);
    __syncthreads();  // both warpgroups are done with this stage before it is refilled
    buf ^= 1;
  }

  apb_wg_store_rows<T>(o, m, l, p, hq, row_base, q_last, tig);
#else
  __trap();  // built without sm_90a: the launcher never picks this kernel
#endif
}

// ---------------------------------------------------------------------------------------
// Warp-specialised version (FlashAttention-3's structure, without its intra-warpgroup
// overlap): warpgroup 0 is a producer whose one thread streams Q once and the K/V tiles
// through a 2-stage ring with TMA (bulk tensor copies, 128B-swizzled into exactly the
// layout wgmma reads, out-of-range rows zero-filled), each stage guarded by "full"
// (transaction-count) and "empty" (consumer release) mbarriers. Warpgroups 1 and 2 are the
// consumers (64 query rows each) and never wait for each other, so one's softmax overlaps
// the other's tensor-core work. Registers move from producer to consumers (setmaxnreg).
constexpr int kApbWsThreads = 384;
constexpr size_t kApbWsSmemBytes = 5 * kWgTile + 1024 + 128;

template <typename T, int kSched>
__global__ void __launch_bounds__(kApbWsThreads, 1)
    apb_attention_ws_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                            const __grid_constant__ CUtensorMap tm_v, const ApbParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = 128;
  extern __shared__ uint8_t apb_ws_smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(apb_ws_smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* q_s = smem;
  uint8_t* k_s = smem + kWgTile;      // 2 stages
  uint8_t* v_s = smem + 3 * kWgTile;  // 2 stages
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + 5 * kWgTile);
  uint64_t* q_full = bars;
  uint64_t* k_full = bars + 1;   // [2]
  uint64_t* v_full = bars + 3;   // [2]
  uint64_t* k_empty = bars + 5;  // [2]
  uint64_t* v_empty = bars + 7;  // [2]

  const int wg = warpgroup_index();
  const int hq = blockIdx.x, hk = hq / (p.Hq / p.Hkv);
  const int tile = p.q_tiles - 1 - static_cast<int>(blockIdx.y);
  const int q0 = tile * kApbWgRows, q_last = min(q0 + kApbWgRows, p.Tq) - 1;
  const int A = p.anchor_len, P = p.passing_len;
  int kbeg, kend;
  apb_key_range(q0, q_last, A, P, kbeg, kend);
  const int n_tiles = (kend - kbeg + kApbWgKeys - 1) / kApbWgKeys;

  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
    for (int s = 0; s < 2; ++s) {
      mbar_init(&k_full[s], 1);
      mbar_init(&v_full[s], 1);
      mbar_init(&k_empty[s], 8);  // one arrival per consumer warp
      mbar_init(&v_empty[s], 8);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (wg == 0) {  // ------------------------------------------------------------ producer
    setmaxnreg_dec<40>();
    // K and V stream from two threads (warps 0 and 1), each on its own ring: a V stage is
    // released later than its K stage (after P V; with kSched 3 only in the next tile's
    // turn), and one thread would hold the next K load back behind it.
    if (threadIdx.x == 0) {
      mbar_arrive_expect_tx(q_full, kWgTile);
      tma_load_2d(q_s, &tm_q, hq * D, q0, q_full);
      tma_load_2d(q_s + kWgSlab, &tm_q, hq * D + 64, q0, q_full);
    }
    if (threadIdx.x == 0 || threadIdx.x == 32) {
      const bool is_k = threadIdx.x == 0;
      const void* tm = is_k ? static_cast<const void*>(&tm_k) : static_cast<const void*>(&tm_v);
      uint8_t* ring = is_k ? k_s : v_s;
      uint64_t* full = is_k ? k_full : v_full;
      uint64_t* empty = is_k ? k_empty : v_empty;
      for (int it = 0; it < n_tiles; ++it) {
        const int st = it & 1;
        const int k0 = kbeg + (n_tiles - 1 - it) * kApbWgKeys;
        if (it >= 2) mbar_wait(&empty[st], ((it >> 1) - 1) & 1);
        mbar_arrive_expect_tx(&full[st], kWgTile);
        tma_load_2d(ring + st * kWgTile, tm, hk * D, k0, &full[st]);
        tma_load_2d(ring + st * kWgTile + kWgSlab, tm, hk * D + 64, k0, &full[st]);
      }
    }
    return;
  }
  // ------------------------------------------------------------------------- consumers
  setmaxnreg_inc<232>();
  const int c = wg - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, tig = lane % 4;
  const int row_base = q0 + c * 64 + warp * 16 + g;  // rows row_base and row_base + 8
  const float sl2 = p.scale_log2;
  float o[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) o[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  mbar_wait(q_full, 0);
  // kSched 1, 2, 3: the consumers take turns issuing their GEMMs (named barriers 1 and 2), so
  // one's softmax runs under the other's tensor-core work. kSched 2 also issues tile j-1's
  // P V together with tile j's Q K^T in one window; kSched 3 issues that P V after the
  // Q K^T, waits only for the Q K^T (releasing K early) and in the source runs its softmax
  // of tile j before waiting for the P V (FlashAttention-3's intra-warpgroup overlap). In
  // the SASS (CUDA 13.0) ptxas hoists that wait to the top of the softmax's basic block,
  // so the P V does not run under this warpgroup's softmax; forcing it to (bench/NOTES.md,
  // APB v5) measured no faster.
  constexpr bool kDeferPv = kSched >= 2;
  if (kSched > 0 && c == 1) named_bar_arrive(1, 256);  // consumer 0 goes first
  uint32_t pf[8][4];
  int prev_st = 0;
  uint32_t prev_parity = 0;
  auto issue_pv = [&](int stage) { wg_issue_pv<T>(o, pf, v_s + stage * kWgTile); };

  for (int it = 0; it < n_tiles; ++it) {
    const int st = it & 1;
    const uint32_t parity = (it >> 1) & 1;
    const int k0 = kbeg + (n_tiles - 1 - it) * kApbWgKeys;
    mbar_wait(&k_full[st], parity);
    if (kSched > 0) named_bar_sync(1 + c, 256);
    if (kSched == 2 && it > 0) {
      mbar_wait(&v_full[prev_st], prev_parity);
      issue_pv(prev_st);
    }
    float s[64];
    wg_issue_qk<T>(s, q_s, c * 64 * 128, k_s + st * kWgTile);
    const bool other_turn = kSched > 0 && !(c == 1 && it == n_tiles - 1);
    // (one branch per path: ptxas serialises wgmma where it cannot see which groups are done)
    if (kSched == 3 && it > 0) {
      mbar_wait(&v_full[prev_st], prev_parity);
      issue_pv(prev_st);
      if (other_turn) named_bar_arrive(2 - c, 256);  // the other's turn
      wgmma_wait<1>();  // this tile's Q K^T; the P V behind it may still run
    } else {
      if (other_turn) named_bar_arrive(2 - c, 256);
      wgmma_wait<0>();
    }
    wgmma_fence_operands(s);
    if (kSched == 2) wgmma_fence_operands(o);
    __syncwarp();
    if (lane == 0) {
      mbar_arrive(&k_empty[st]);
      if (kSched == 2 && it > 0) mbar_arrive(&v_empty[prev_st]);
    }

    const bool full = k0 + kApbWgKeys - 1 <= P + q0 && (q0 >= A || k0 >= P) && k0 + kApbWgKeys <= kend;
    if (!full) {
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        const int key = k0 + (i / 4) * 8 + 2 * tig + (i & 1);
        const int q = row_base + ((i >> 1) & 1) * 8;
        if (!(key < kend && key <= P + q && (q >= A || key >= P))) s[i] = -INFINITY;
      }
    }
    float alpha[2];
    wg_online_softmax_fma(s, m, l, alpha, sl2);
    if (kSched == 3) wg_wait_pv(o, &v_empty[prev_st], it > 0);  // tile j-1's P V, before O is rescaled
    wg_rescale(o, alpha);
    wg_pack_p<T>(s, pf);
    if (!kDeferPv) {
      mbar_wait(&v_full[st], parity);
      issue_pv(st);
      wg_wait_pv(o, &v_empty[st], true);
    }
    prev_st = st;
    prev_parity = parity;
  }
  if (kDeferPv) {  // the last tile's P V
    mbar_wait(&v_full[prev_st], prev_parity);
    issue_pv(prev_st);
    wg_wait_pv(o, nullptr, false);
  }

  apb_wg_store_rows<T>(o, m, l, p, hq, row_base, q_last, tig);
#else
  __trap();  // built without sm_90a: the launcher never picks this kernel
#endif
}

}  // namespace frspec
