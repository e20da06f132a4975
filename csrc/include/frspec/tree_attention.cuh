// Tree attention: N tree queries per sequence over [committed prefix | tree nodes] of the
// KV cache; every query sees the whole prefix plus its ancestors and itself (packed
// ancestor mask). FlashAttention-2 style: a CTA owns 64 query rows of one KV head -- the
// G = Hq / Hkv query heads of all N nodes are packed together as rows, so one K/V read
// serves G x N queries -- and a contiguous range of keys (split-K, flash-decoding style,
// so a long prefix fills the GPU). K/V tiles of 64 keys are double-buffered in shared
// memory by cp.async; S = QK^T and O += PV run on mma.sync m16n8k16 with ldmatrix
// fragments; softmax is online in base 2. Splits write fp32 partials + LSE, merged by
// tree_attention_merge_kernel.
#pragma once

#include <cooperative_groups.h>
#include <type_traits>

#include "frspec/common.cuh"
#include "frspec/mma.cuh"

namespace frspec {

constexpr int kTaRows = 64;      // query rows per CTA (4 warps x 16)
constexpr int kTaKeys = 64;      // keys per tile
constexpr int kTaThreads = 128;

template <int D>
struct TaSmem {
  static constexpr int kStride = D + 8;  // bf16 elements per padded row (conflict-free ldmatrix)
  static constexpr int kTile = kTaKeys * kStride;
  static constexpr size_t kBytes = size_t(4) * kTile * 2;  // K, V double-buffered
};

struct TreeAttnParams {
  const void* q;        // [B, N, Hq, D]
  const void* k;        // [B, L_max, Hkv, D]
  const void* v;
  const int32_t* cache_len;  // [B]
  const uint64_t* mask;      // [B, N, W]: W = ceil(T / 64) words per query
  void* out;                 // [B, N, Hq, D] (splits == 1)
  float* lse;                // [B, N, Hq]     (splits == 1)
  float* part_out;           // [splits, B, N, Hq, D] fp32 (splits > 1)
  float* part_lse;           // [splits, B, N, Hq]
  int B, N, Hq, Hkv, D, L_max, W, splits, row_tiles;
  int T;  // tree nodes at cache_len.. (>= N: the queries are the last N of them)
  int cluster;       // > 1: the splits form one thread-block cluster and merge in the kernel (no
                     // merge kernel): tree_decode_kernel's (a KV head's) through distributed shared
                     // memory, the wgmma kernel's (a row tile's) through L2 after a cluster barrier
  float scale_log2;  // softmax scale * log2(e)
  int q_tma;         // wgmma kernel: Q's row tile comes by TMA (tm_q; needs G | 128), else cp.async
  int o_tma;         // wgmma kernel, one split: out goes by TMA (tm_o; needs G | 64), staged in Q's rows
};

#ifndef FRSPEC_TA_MIN_BLOCKS
#define FRSPEC_TA_MIN_BLOCKS 3  // 3 CTAs (12 warps) per SM: registers capped at 168
#endif

template <typename T, int D>
__global__ void __launch_bounds__(kTaThreads, FRSPEC_TA_MIN_BLOCKS)
    tree_attention_kernel(const TreeAttnParams p) {
  using S = TaSmem<D>;
  extern __shared__ __align__(16) uint8_t ta_smem_raw[];
  T* smem = reinterpret_cast<T*>(ta_smem_raw);
  pdl_wait();  // PDL: nothing read before the previous kernel finished
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
  const int row_tile = blockIdx.x % p.row_tiles, split = blockIdx.x / p.row_tiles;
  const int h = blockIdx.y, b = blockIdx.z;
  const int G = p.Hq / p.Hkv, rows = p.N * G;
  const int prefix = p.cache_len[b];
  const int total = min(prefix + p.T, p.L_max);
  // This split's key range, in whole tiles.
  const int tiles = (total + kTaKeys - 1) / kTaKeys;
  const int per_split = (tiles + p.splits - 1) / p.splits;
  const int kbeg = split * per_split * kTaKeys, kend = min(total, (split + 1) * per_split * kTaKeys);

  // Rows g and g + 8 of this warp: query node and head.
  int node[2], qh[2];
  bool row_ok[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = row_tile * kTaRows + warp * 16 + g + e * 8;
    row_ok[e] = r < rows;
    const int rr = row_ok[e] ? r : 0;
    node[e] = rr / G;
    qh[e] = h * G + rr % G;
  }
  // Q fragments (A operand), straight from global memory.
  const T* q = static_cast<const T*>(p.q);
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const T* qrow = q + ((static_cast<int64_t>(b) * p.N + node[e]) * p.Hq + qh[e]) * D + ks * 16 + 2 * tig;
      qf[ks][e] = row_ok[e] ? *reinterpret_cast<const uint32_t*>(qrow) : 0u;
      qf[ks][e + 2] = row_ok[e] ? *reinterpret_cast<const uint32_t*>(qrow + 8) : 0u;
    }

  float o[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  const T* kg = static_cast<const T*>(p.k) + static_cast<int64_t>(b) * p.L_max * p.Hkv * D + static_cast<int64_t>(h) * D;
  const T* vg = static_cast<const T*>(p.v) + static_cast<int64_t>(b) * p.L_max * p.Hkv * D + static_cast<int64_t>(h) * D;
  const int64_t key_stride = static_cast<int64_t>(p.Hkv) * D;
  auto load_tile = [&](int k0, int buf) {
    T* ks_ = smem + buf * 2 * S::kTile;
    T* vs_ = ks_ + S::kTile;
    for (int c = threadIdx.x; c < kTaKeys * (D / 8); c += kTaThreads) {
      const int r = c / (D / 8), col = (c % (D / 8)) * 8;
      const int key = k0 + r;
      const bool ok = key < kend;
      const int64_t off = static_cast<int64_t>(ok ? key : 0) * key_stride + col;
      cp_async_16(ks_ + r * S::kStride + col, kg + off, ok ? 16 : 0);
      cp_async_16(vs_ + r * S::kStride + col, vg + off, ok ? 16 : 0);
    }
    cp_async_commit();
  };

  const uint64_t* mrow[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) mrow[e] = p.mask + (static_cast<int64_t>(b) * p.N + node[e]) * p.W;

  int buf = 0;
  if (kbeg < kend) load_tile(kbeg, 0);
  for (int k0 = kbeg; k0 < kend; k0 += kTaKeys) {
    if (k0 + kTaKeys < kend) {
      load_tile(k0 + kTaKeys, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* ks_ = smem + buf * 2 * S::kTile;
    const T* vs_ = ks_ + S::kTile;

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float s[kTaKeys / 8][4];
    qk_tile<T, kTaKeys, D>(s, qf, ks_, S::kStride, lane);
    // Mask: keys past the range, tree keys that are not ancestors-or-self.
    const bool tree_tile = k0 + kTaKeys > prefix;
#pragma unroll
    for (int nt = 0; nt < kTaKeys / 8; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int key = k0 + nt * 8 + 2 * tig + (c & 1);
        const int e = c >> 1;
        bool ok = key < kend;
        if (tree_tile && key >= prefix && ok) {
          const int t = key - prefix;
          ok = (mrow[e][t >> 6] >> (t & 63)) & 1ull;
        }
        s[nt][c] = ok ? s[nt][c] * p.scale_log2 : -INFINITY;
      }
    online_softmax_pv_tile<T, kTaKeys, D>(s, m, l, o, vs_, S::kStride, lane);
    __syncthreads();  // everyone is done with this buffer before it is refilled
    buf ^= 1;
  }

  // Dependents may launch now, not at the top: there, each launch in a chain of these
  // kernels let the next one's CTAs take SM slots to wait in (measured 10-20% slower).
  pdl_launch_dependents();
  // Finish: reduce l over the quad, normalise, write out/lse or the split partials.
  quad_sum(l);
  constexpr float kLn2 = 0.69314718055994531f;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    if (!row_ok[e]) continue;
    const float inv = l[e] > 0.f ? 1.f / l[e] : 0.f;
    const float lse = l[e] > 0.f ? (m[e] + log2f(l[e])) * kLn2 : -INFINITY;
    const int64_t row = (static_cast<int64_t>(b) * p.N + node[e]) * p.Hq + qh[e];
    if (p.splits == 1) {
      T* out = static_cast<T*>(p.out) + row * D;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt)
        *reinterpret_cast<uint32_t*>(out + nt * 8 + 2 * tig) = pack2<T>(o[nt][2 * e] * inv, o[nt][2 * e + 1] * inv);
      if (tig == 0) p.lse[row] = lse;
    } else {
      const int64_t prow = static_cast<int64_t>(split) * p.B * p.N * p.Hq + row;
      float* out = p.part_out + prow * D;
#pragma unroll
      for (int nt = 0; nt < D / 8; ++nt)
        *reinterpret_cast<float2*>(out + nt * 8 + 2 * tig) = make_float2(o[nt][2 * e] * inv, o[nt][2 * e + 1] * inv);
      if (tig == 0) p.part_lse[prow] = lse;
    }
  }
}

// One-node trees (N == 1: an autoregressive decode step, or a tree of just the root): the
// 64-row MMA tile above would hold only G of its rows, so a CTA instead streams its key
// range with plain loads, one key per warp at a time and kTdUnroll keys in flight: each
// lane holds D / 32 dimensions of every key, the G query heads' scores are warp sums, the
// online softmax is per warp, and the 4 warps merge in shared memory at the end. Writes
// the same out / lse or split partials as tree_attention_kernel (same merge kernel).
constexpr int kTdMaxG = 8;      // query heads per KV head handled here (more: the MMA kernel)
constexpr int kTdUnroll = 8;    // keys per warp per iteration
constexpr int kTdWarps = 8;
constexpr int kTdMaxCluster = 8;  // portable cluster size: splits merged on chip when <= this
constexpr int kTdClusterKeys = 3072;  // auto split count picks a cluster up to this cache length

template <typename T, int D>
__global__ void __launch_bounds__(kTdWarps * 32) tree_decode_kernel(const TreeAttnParams p) {
  constexpr int VD = D / 32;  // dimensions per lane (4 for D = 128, 2 for D = 64)
  using KV = Vec<T, VD>;
  __shared__ float sm_m[kTdWarps][kTdMaxG], sm_l[kTdWarps][kTdMaxG];
  __shared__ float sm_o[kTdWarps][kTdMaxG][D];
  __shared__ float cl_o[kTdMaxG][D], cl_lse[kTdMaxG];  // this CTA's split result (cluster mode)
  // At the top here (unlike the MMA kernel): in the decode step the next kernel is a GEMV
  // that streams its weights before its own wait, under this kernel.
  pdl_launch_dependents();
  pdl_wait();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int G = p.Hq / p.Hkv;
  const int prefix = p.cache_len[b];
  // keys 0..prefix-1 (the cache) and the node itself at `prefix` if its mask bit is set
  const bool self = (p.mask[static_cast<int64_t>(b) * p.W] & 1ull) != 0;
  const int total = min(prefix + (self ? 1 : 0), p.L_max);
  const int chunk = (total + p.splits - 1) / p.splits;
  const int kbeg = split * chunk, kend = min(total, kbeg + chunk);

  const T* q = static_cast<const T*>(p.q) + (static_cast<int64_t>(b) * p.Hq + h * G) * D + lane * VD;
  float qf[kTdMaxG][VD];
#pragma unroll
  for (int g = 0; g < kTdMaxG; ++g) {
    KV v;
    if (g < G) v.load(q + g * D);
#pragma unroll
    for (int i = 0; i < VD; ++i) qf[g][i] = g < G ? to_float(v.v[i]) * p.scale_log2 : 0.f;
  }
  float m[kTdMaxG], l[kTdMaxG], o[kTdMaxG][VD];
#pragma unroll
  for (int g = 0; g < kTdMaxG; ++g) {
    m[g] = -INFINITY, l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < VD; ++i) o[g][i] = 0.f;
  }
  const int64_t row_stride = static_cast<int64_t>(p.Hkv) * D;
  const T* kbase = static_cast<const T*>(p.k) + static_cast<int64_t>(b) * p.L_max * row_stride + h * D + lane * VD;
  const T* vbase = static_cast<const T*>(p.v) + static_cast<int64_t>(b) * p.L_max * row_stride + h * D + lane * VD;

  for (int j0 = kbeg + warp * kTdUnroll; j0 < kend; j0 += kTdWarps * kTdUnroll) {
    KV kr[kTdUnroll], vr[kTdUnroll];
#pragma unroll
    for (int u = 0; u < kTdUnroll; ++u) {  // all loads first: kTdUnroll keys and values in flight
      const int j = min(j0 + u, kend - 1);
      kr[u].load_nc(kbase + j * row_stride);
      vr[u].load_nc(vbase + j * row_stride);
    }
#pragma unroll
    for (int g = 0; g < kTdMaxG; ++g) {
      if (g >= G) break;
      float sc[kTdUnroll];
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < kTdUnroll; ++u) {
        float d = 0.f;
#pragma unroll
        for (int i = 0; i < VD; ++i) d += qf[g][i] * to_float(kr[u].v[i]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
        sc[u] = j0 + u < kend ? d : -INFINITY;
        mx = fmaxf(mx, sc[u]);
      }
      const float corr = fast_exp2(m[g] - mx);  // m = -inf before the first key: 0, and o, l are 0
      l[g] *= corr;
#pragma unroll
      for (int i = 0; i < VD; ++i) o[g][i] *= corr;
#pragma unroll
      for (int u = 0; u < kTdUnroll; ++u) {
        const float pu = fast_exp2(sc[u] - mx);
        l[g] += pu;
#pragma unroll
        for (int i = 0; i < VD; ++i) o[g][i] += pu * to_float(vr[u].v[i]);
      }
      m[g] = mx;
    }
  }
  // merge the warps: every lane holds its own dimensions, m and l are warp-uniform
#pragma unroll
  for (int g = 0; g < kTdMaxG; ++g) {
    if (g >= G) break;
    if (lane == 0) sm_m[warp][g] = m[g], sm_l[warp][g] = l[g];
#pragma unroll
    for (int i = 0; i < VD; ++i) sm_o[warp][g][lane * VD + i] = o[g][i];
  }
  __syncthreads();
  constexpr float kLn2 = 0.69314718055994531f;
  for (int t = threadIdx.x; t < G * D; t += blockDim.x) {
    const int g = t / D, d = t % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kTdWarps; ++w) M = fmaxf(M, sm_m[w][g]);
    float L = 0.f, O = 0.f;
#pragma unroll
    for (int w = 0; w < kTdWarps; ++w) {
      const float c = sm_m[w][g] == -INFINITY ? 0.f : fast_exp2(sm_m[w][g] - M);
      L += sm_l[w][g] * c;
      O += sm_o[w][g][d] * c;
    }
    const float val = L > 0.f ? O / L : 0.f;
    const float lse = L > 0.f ? (M + log2f(L)) * kLn2 : -INFINITY;
    const int64_t row = static_cast<int64_t>(b) * p.Hq + h * G + g;  // N == 1
    if (p.cluster > 1) {
      cl_o[g][d] = val;
      if (d == 0) cl_lse[g] = lse;
    } else if (p.splits == 1) {
      static_cast<T*>(p.out)[row * D + d] = from_float<T>(val);
      if (d == 0) p.lse[row] = lse;
    } else {
      const int64_t prow = static_cast<int64_t>(split) * p.B * p.Hq + row;
      p.part_out[prow * D + d] = val;
      if (d == 0) p.part_lse[prow] = lse;
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // clusters: the host sets p.cluster only on sm_90+
  if (p.cluster > 1) {
    // The cluster's CTAs are this KV head's splits: each merges a share of the G x D
    // outputs, reading every split's result from its CTA's shared memory.
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();  // every split's result is in its shared memory
    const int n = static_cast<int>(cluster.num_blocks()), rank = static_cast<int>(cluster.block_rank());
    for (int t = rank * blockDim.x + threadIdx.x; t < G * D; t += n * blockDim.x) {
      const int g = t / D, d = t % D;
      float ls[kTdMaxCluster], os[kTdMaxCluster];
      float M = -INFINITY;
#pragma unroll
      for (int s = 0; s < kTdMaxCluster; ++s) {
        if (s < n) {
          ls[s] = *cluster.map_shared_rank(&cl_lse[g], s);
          os[s] = *cluster.map_shared_rank(&cl_o[g][d], s);
          M = fmaxf(M, ls[s]);
        }
      }
      float L = 0.f, O = 0.f;
#pragma unroll
      for (int s = 0; s < kTdMaxCluster; ++s) {
        if (s < n && ls[s] != -INFINITY) {
          const float w = __expf(ls[s] - M);
          L += w;
          O += w * os[s];
        }
      }
      const int64_t row = static_cast<int64_t>(b) * p.Hq + h * G + g;
      static_cast<T*>(p.out)[row * D + d] = from_float<T>(L > 0.f ? O / L : 0.f);
      if (d == 0) p.lse[row] = L > 0.f ? M + logf(L) : -INFINITY;
    }
    cluster.sync();  // no CTA leaves while another may still read its shared memory
  }
#endif
}

// Merge the split partials of each (sequence, node, query head) row: one warp per row, each
// lane D / 32 consecutive dimensions. The first kMergeUnroll splits' partials (16- or 8-byte
// loads) and every split's LSE are asked for at once -- the loads need nothing, only the
// weights need the LSEs -- so one L2 round trip precedes the arithmetic (the partials come
// from L2, and the merge is bound by bytes in flight and round trips: with 4 scalar loads
// per lane, B = 1, N = 60 at 4K took 24.1 us, with 8 vector loads 20.6, with the LSEs
// alongside 18.9; bench/NOTES.md). Lane s keeps the weights of splits s and s + 32 in
// registers; shuffles hand them out.
constexpr int kMergeWarps = 8;
constexpr int kMergeMaxSplits = 64;  // two weights per lane
constexpr int kMergeUnroll = 8;

// kL2Only: the partials were written by other CTAs of the same kernel (the wgmma kernel's
// cluster merge), so they are read past L1 (ld.global.cg).
template <typename T, int V, bool kL2Only = false>
__device__ __forceinline__ void merge_row(const float* __restrict__ part_out, const float* __restrict__ part_lse,
                                          int splits, int64_t rows, int64_t row, int D, int lane, T* __restrict__ out,
                                          float* __restrict__ lse) {
  using Vec = typename std::conditional<V == 4, float4, float2>::type;
  auto load = [](const auto* p) { return kL2Only ? __ldcg(p) : *p; };
  Vec x[kMergeUnroll];
#pragma unroll
  for (int u = 0; u < kMergeUnroll; ++u)
    if (u < splits) x[u] = load(reinterpret_cast<const Vec*>(part_out + (u * rows + row) * D + lane * V));
  const float l0 = lane < splits ? load(part_lse + lane * rows + row) : -INFINITY;
  const float l1 = lane + 32 < splits ? load(part_lse + (lane + 32) * rows + row) : -INFINITY;
  float mx = fmaxf(l0, l1);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  const float ref = mx == -INFINITY ? 0.f : mx;
  const float w0 = l0 == -INFINITY ? 0.f : __expf(l0 - ref), w1 = l1 == -INFINITY ? 0.f : __expf(l1 - ref);
  float wsum = w0 + w1;
  for (int o = 16; o > 0; o >>= 1) wsum += __shfl_xor_sync(0xffffffffu, wsum, o);
  float acc[V];
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0.f;
  for (int s0 = 0; s0 < splits; s0 += kMergeUnroll) {
    if (s0 > 0) {
#pragma unroll
      for (int u = 0; u < kMergeUnroll; ++u)
        if (s0 + u < splits) x[u] = load(reinterpret_cast<const Vec*>(part_out + ((s0 + u) * rows + row) * D + lane * V));
    }
#pragma unroll
    for (int u = 0; u < kMergeUnroll; ++u) {
      const int s = s0 + u;  // (uniform across the warp)
      if (s >= splits) break;
      const float w = __shfl_sync(0xffffffffu, s < 32 ? w0 : w1, s & 31);
      if (w > 0.f) {  // an empty split's partial may be 0 / 0
        const float* xf = reinterpret_cast<const float*>(&x[u]);
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += w * xf[i];
      }
    }
  }
  const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
  if constexpr (V == 4)
    *reinterpret_cast<uint2*>(out + row * D + lane * 4) =
        make_uint2(pack2<T>(acc[0] * inv, acc[1] * inv), pack2<T>(acc[2] * inv, acc[3] * inv));
  else
    *reinterpret_cast<uint32_t*>(out + row * D + lane * 2) = pack2<T>(acc[0] * inv, acc[1] * inv);
  if (lane == 0) lse[row] = wsum > 0.f ? ref + logf(wsum) : -INFINITY;
}

template <typename T>
__global__ void __launch_bounds__(kMergeWarps * 32)
    tree_attention_merge_kernel(const float* __restrict__ part_out, const float* __restrict__ part_lse, int splits,
                                int64_t rows, int D, T* __restrict__ out, float* __restrict__ lse) {
  pdl_launch_dependents();  // PDL: nothing read before the previous kernel finished
  pdl_wait();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeWarps + warp;
  if (row >= rows) return;  // whole warps leave: no block-wide barrier follows
  if (D == 128)
    merge_row<T, 4>(part_out, part_lse, splits, rows, row, D, lane, out, lse);
  else
    merge_row<T, 2>(part_out, part_lse, splits, rows, row, D, lane, out, lse);
}

}  // namespace frspec
