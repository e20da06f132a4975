// FR-Spec draft head: logits = hidden @ W^T over the K frequent tokens, log-softmax over
// those K, top-k -- fused so the [K, H] weight is read once for all n hidden rows and no
// logits reach device memory.
//
// Pass 1 (fr_lm_head_partial_kernel): block b owns weight rows [128 b, 128 b + 128).
//   8 warps x 16 rows. Each warp streams its rows' weights straight from global memory
//   into mma.sync A fragments with 16-byte loads (each weight element is used once, so
//   there is nothing to stage), while the hidden rows (reused by every warp) sit in
//   shared memory in fragment order. Because a dot product does not care in which order
//   its terms are summed, thread t's 16-byte load of 8 consecutive h-columns is fed to
//   the k-slots {2t%4, 2t%4+1, 2t%4+8, 2t%4+9} of two m16n8k16 MMAs, and the hidden
//   fragment uses the same permutation. The block then writes, per hidden row, the
//   sorted top min(k, 128) of its 128 logits and (max, sum exp(logit - max)).
// Pass 2 (fr_lm_head_merge_kernel): one block per hidden row merges the partial top-k
//   lists (warp bitonic merges) and the partial softmax statistics, and writes token ids
//   (through `ids`) and log-probabilities.
#pragma once

#include "frspec/common.cuh"
#include "frspec/mma.cuh"
#include "frspec/warp_sort.cuh"

namespace frspec {

constexpr int kHeadRowsPerBlock = 128;  // 8 warps x 16 weight rows
constexpr int kHeadThreads = 256;
constexpr int kHeadMaxK = 64;

// Two MMAs over 32 h-columns: a_lo/a_hi are rows g and g+8 of the warp's 16 weight rows,
// b the hidden fragment, all holding the same 8 permuted columns per thread.
template <typename T>
__device__ __forceinline__ void mma_32cols(float (&c)[4], const uint4& a_lo, const uint4& a_hi,
                                           const uint4& b) {
  mma_16816<T>(c, a_lo.x, a_hi.x, a_lo.y, a_hi.y, b.x, b.y);
  mma_16816<T>(c, a_lo.z, a_hi.z, a_lo.w, a_hi.w, b.z, b.w);
}

// Pipeline of the partial kernel: stage gi holds weight columns [128 gi, 128 gi + 128) of
// the block's 128 rows (per warp 16 rows x 128 columns = 4 KB, in fragment order) and the
// same columns of the hidden rows (NT x 2 KB), all brought in by cp.async (no registers
// held, so bytes in flight are bounded by shared memory, not the register file). Each
// stage is one commit group; one barrier per stage makes every thread's copies visible.
// Tuning knobs (bench/NOTES.md): columns per stage, stages, blocks per SM.
#ifndef FRSPEC_HEAD_GROUP_COLS
#define FRSPEC_HEAD_GROUP_COLS 128
#endif
// Blocks per SM: 1 (deeper pipeline) measured best for n <= 16, 2 (the epilogue of one
// block overlaps the other's streaming) for larger n; a nonzero value forces one.
#ifndef FRSPEC_HEAD_BLOCKS_PER_SM
#define FRSPEC_HEAD_BLOCKS_PER_SM 0
#endif
constexpr int kHeadGroupCols = FRSPEC_HEAD_GROUP_COLS;
constexpr int kHeadSubs = kHeadGroupCols / 32;   // 32-column sub-chunks per stage
constexpr int kHeadWarpStageU4 = kHeadSubs * 2 * 32;  // [sub-chunk][row half][lane] x 16 B
constexpr int kHeadWStageU4 = (kHeadThreads / 32) * kHeadWarpStageU4;
template <int NT>
struct HeadPipe {
  static constexpr int kBlocksPerSM =
      FRSPEC_HEAD_BLOCKS_PER_SM > 0 ? FRSPEC_HEAD_BLOCKS_PER_SM : (NT <= 2 ? 1 : 2);
  static constexpr int kXStageU4 = kHeadSubs * NT * 32;  // [sub-chunk][nt][lane] x 16 B
  // As many stages as fit kBlocksPerSM blocks per SM (227 KB, 1 KB reserved each), <= 4.
  static constexpr int kFit = (227 * 1024 / kBlocksPerSM - 1024) / ((kHeadWStageU4 + kXStageU4) * 16);
  static constexpr int kStages = kFit > 4 ? 4 : kFit;
  static_assert(kStages >= 2, "shared memory too small for two stages");
  static constexpr int kStageU4 = kHeadWStageU4 + kXStageU4;
  static constexpr size_t kSmemBytes = size_t(kStages) * kStageU4 * 16;
};

// NT: hidden rows padded to NT * 8 (n <= 8 NT).
template <typename T, int NT>
__global__ void __launch_bounds__(kHeadThreads, HeadPipe<NT>::kBlocksPerSM)
    fr_lm_head_partial_kernel(const T* __restrict__ hidden, const T* __restrict__ weight, int n,
                              int H, int K, int kc, uint64_t* __restrict__ part_keys,
                              float2* __restrict__ part_stats) {
  using Pipe = HeadPipe<NT>;
  constexpr int S = Pipe::kStages;
  extern __shared__ uint4 smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, tig = lane % 4;
  const int row_lo = blockIdx.x * kHeadRowsPerBlock + warp * 16 + g;
  const int row_hi = row_lo + 8;
  const T* w_lo = weight + static_cast<int64_t>(min(row_lo, K - 1)) * H;
  const T* w_hi = weight + static_cast<int64_t>(min(row_hi, K - 1)) * H;
  const int groups = (H + kHeadGroupCols - 1) / kHeadGroupCols;

  auto issue = [&](int gi) {
    if (gi < groups) {
      uint4* stage = smem + (gi % S) * Pipe::kStageU4;
      uint4* wdst = stage + warp * kHeadWarpStageU4;
#pragma unroll
      for (int u = 0; u < kHeadSubs; ++u) {
        const int col = gi * kHeadGroupCols + u * 32 + tig * 8;
        const bool col_ok = col < H;
        cp_async_16(wdst + (u * 2 + 0) * 32 + lane, w_lo + (col_ok ? col : 0), (col_ok && row_lo < K) ? 16 : 0);
        cp_async_16(wdst + (u * 2 + 1) * 32 + lane, w_hi + (col_ok ? col : 0), (col_ok && row_hi < K) ? 16 : 0);
      }
      uint4* xdst = stage + kHeadWStageU4;
      for (int i = threadIdx.x; i < Pipe::kXStageU4; i += kHeadThreads) {
        const int t = i % 32, nt = (i / 32) % NT, u = i / (32 * NT);
        const int r = nt * 8 + t / 4, col = gi * kHeadGroupCols + u * 32 + (t % 4) * 8;
        const bool ok = r < n && col < H;  // zeros elsewhere: zero weights never meet garbage
        cp_async_16(xdst + i, hidden + (ok ? static_cast<int64_t>(r) * H + col : 0), ok ? 16 : 0);
      }
    }
    cp_async_commit();  // empty groups keep the wait counts uniform
  };
#pragma unroll
  for (int p = 0; p < S - 1; ++p) issue(p);

  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;

  for (int gi = 0; gi < groups; ++gi) {
    cp_async_wait<S - 2>();
    __syncthreads();  // stage gi visible to all; everyone is done with stage gi - 1
    issue(gi + S - 1);  // refills the slot of stage gi - 1
    const uint4* stage = smem + (gi % S) * Pipe::kStageU4;
    const uint4* wsrc = stage + warp * kHeadWarpStageU4;
    const uint4* xsrc = stage + kHeadWStageU4;
#pragma unroll
    for (int u = 0; u < kHeadSubs; ++u) {
      const uint4 a_lo = wsrc[(u * 2 + 0) * 32 + lane];
      const uint4 a_hi = wsrc[(u * 2 + 1) * 32 + lane];
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma_32cols<T>(acc[nt], a_lo, a_hi, xsrc[(u * NT + nt) * 32 + lane]);
    }
  }
  cp_async_wait<0>();
  // Let the merge kernel launch now (programmatic dependent launch): its blocks start and
  // wait in griddepcontrol.wait until this grid has finished, hiding the launch latency.
  pdl_launch_dependents();

  // Logits to shared memory (the pipeline's space) as [hidden row][weight row of block].
  __syncthreads();
  float* logits = reinterpret_cast<float*>(smem);
  const int local = warp * 16 + g;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int j = nt * 8 + 2 * tig;
    logits[j * kHeadRowsPerBlock + local] = acc[nt][0];
    logits[(j + 1) * kHeadRowsPerBlock + local] = acc[nt][1];
    logits[j * kHeadRowsPerBlock + local + 8] = acc[nt][2];
    logits[(j + 1) * kHeadRowsPerBlock + local + 8] = acc[nt][3];
  }
  __syncthreads();

  const int nblk = gridDim.x;
  for (int j = warp; j < n; j += kHeadThreads / 32) {
    uint64_t key[4];
    float vmax = -INFINITY;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int s = e * 32 + lane;
      const int row = blockIdx.x * kHeadRowsPerBlock + s;
      const float v = logits[j * kHeadRowsPerBlock + s];
      key[e] = row < K ? topk_key(v, row) : kEmptyKey;
      if (row < K) vmax = fmaxf(vmax, v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, o));
    float sum = 0.f;
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (key[e] != kEmptyKey) sum += __expf(key_value(key[e]) - vmax);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    warp_sort_desc<4>(key, lane);
    uint64_t* out = part_keys + (static_cast<int64_t>(j) * nblk + blockIdx.x) * kc;
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (e * 32 + lane < kc) out[e * 32 + lane] = key[e];
    if (lane == 0) part_stats[static_cast<int64_t>(j) * nblk + blockIdx.x] = make_float2(vmax, sum);
  }
}

// Combine (max, sum) softmax partials: sum is relative to max.
__device__ __forceinline__ float2 combine_stats(float2 a, float2 b) {
  const float m = fmaxf(a.x, b.x);
  if (m == -INFINITY) return make_float2(m, 0.f);
  return make_float2(m, a.y * __expf(a.x - m) + b.y * __expf(b.x - m));
}

// Pass 2: one block per hidden row. Every block list is sorted, so list b's k-th key
// t_b is a lower bound of the row's k-th best key, and so is T = max_b t_b: the top k are
// among the keys >= T ("survivors", typically a few dozen). They are gathered into
// shared memory; up to 256 of them rank themselves by counting, more are sorted by warps,
// and only if more than kMergeCapacity survive (k close to the 128 rows of a block) do
// we fall back to merging whole lists.
constexpr int kMergeThreads = 256;
constexpr int kMergeCapacity = 2048;

__global__ void __launch_bounds__(kMergeThreads)
    fr_lm_head_merge_kernel(const uint64_t* __restrict__ part_keys,
                            const float2* __restrict__ part_stats, int nblk, int kc, int k,
                            const int32_t* __restrict__ ids, int64_t* __restrict__ out_ids,
                            float* __restrict__ out_logprobs) {
  constexpr int E = 2;  // 64 keys per warp list, k <= 64
  constexpr int kWarps = kMergeThreads / 32;
  __shared__ uint64_t survivors[kMergeCapacity];
  __shared__ uint64_t lists[kWarps][32 * E];
  __shared__ float2 warp_stats[kWarps];
  __shared__ uint64_t warp_max[kWarps];
  __shared__ uint64_t finals[kMergeThreads];
  __shared__ int hist[kMergeThreads];
  __shared__ uint32_t sel_prefix;
  __shared__ int sel_remaining, n_final;
  __shared__ int count;
  static_assert(kMergeThreads == 256, "one radix bin per thread");
  const int j = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint64_t* rows = part_keys + static_cast<int64_t>(j) * nblk * kc;
  if (threadIdx.x == 0) count = 0;
  pdl_wait();  // the partial kernel's results

  // Softmax statistics and the threshold T, in one sweep over the blocks.
  float2 st = make_float2(-INFINITY, 0.f);
  uint64_t t = kEmptyKey;
  for (int b = threadIdx.x; b < nblk; b += kMergeThreads) {
    st = combine_stats(st, part_stats[static_cast<int64_t>(j) * nblk + b]);
    const uint64_t kth = rows[static_cast<int64_t>(b) * kc + (k - 1)];
    t = kth > t ? kth : t;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float2 other = make_float2(__shfl_xor_sync(0xffffffffu, st.x, o),
                                     __shfl_xor_sync(0xffffffffu, st.y, o));
    st = combine_stats(st, other);
    const uint64_t ot = __shfl_xor_sync(0xffffffffu, t, o);
    t = ot > t ? ot : t;
  }
  if (lane == 0) {
    warp_stats[warp] = st;
    warp_max[warp] = t;
  }
  __syncthreads();
  uint64_t threshold = kEmptyKey;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) threshold = warp_max[w] > threshold ? warp_max[w] : threshold;
  if (threshold == kEmptyKey) threshold = 1;  // fewer than k real keys per block: keep all real

  // Gather the survivors (loads batched so their latencies overlap).
  const int total = nblk * kc;
  for (int i0 = threadIdx.x; i0 < total; i0 += 8 * kMergeThreads) {
    uint64_t key[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int i = i0 + u * kMergeThreads;
      key[u] = i < total ? rows[i] : kEmptyKey;
    }
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      if (key[u] >= threshold) {
        const int pos = atomicAdd(&count, 1);
        if (pos < kMergeCapacity) survivors[pos] = key[u];
      }
    }
  }
  __syncthreads();
  const int n_surv = count;
  const float2 total_st = [&] {
    float2 t2 = make_float2(-INFINITY, 0.f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) t2 = combine_stats(t2, warp_stats[w]);
    return t2;
  }();
  const float lse = total_st.x + logf(total_st.y);
  auto write = [&](int rank, uint64_t key) {
    out_logprobs[static_cast<int64_t>(j) * k + rank] = key_value(key) - lse;
    out_ids[static_cast<int64_t>(j) * k + rank] = ids[key_index(key)];
  };

  // Few candidates: each finds its rank by counting larger keys (keys are unique).
  auto rank_and_write = [&](const uint64_t* cand, int m) {
    if (threadIdx.x < m) {
      const uint64_t mine = cand[threadIdx.x];
      int rank = 0;
      for (int i = 0; i < m; ++i) rank += cand[i] > mine;
      if (rank < k) write(rank, mine);
    }
  };
  if (n_surv <= kMergeThreads) {
    rank_and_write(survivors, n_surv);
    return;
  }
  if (n_surv <= kMergeCapacity) {
    // Radix-select the k-th largest value (upper 32 key bits) among the survivors, 8 bits a
    // pass, then keep the keys whose value is >= it: k plus any exact ties.
    uint32_t prefix = 0, mask = 0;
    int remaining = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
      hist[threadIdx.x] = 0;  // kMergeThreads == 256 bins
      __syncthreads();
      for (int i = threadIdx.x; i < n_surv; i += kMergeThreads) {
        const uint32_t v = static_cast<uint32_t>(survivors[i] >> 32);
        if ((v & mask) == prefix) atomicAdd(&hist[(v >> shift) & 255], 1);
      }
      __syncthreads();
      if (warp == 0) {
        // Lane l holds bins 8l..8l+7; `above` counts the keys in higher bins.
        int c[8], sum = 0;
#pragma unroll
        for (int d = 0; d < 8; ++d) sum += (c[d] = hist[lane * 8 + d]);
        // Inclusive suffix sum over lanes l..31, so `above` = keys in lanes > l.
        int incl = sum;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int from = __shfl_down_sync(0xffffffffu, incl, o);
          if (lane + o < 32) incl += from;
        }
        int above = incl - sum;
#pragma unroll
        for (int d = 7; d >= 0; --d) {
          if (above < remaining && remaining <= above + c[d]) {
            sel_prefix = prefix | (static_cast<uint32_t>(lane * 8 + d) << shift);
            sel_remaining = remaining - above;
          }
          above += c[d];
        }
      }
      __syncthreads();
      prefix = sel_prefix;
      remaining = sel_remaining;
      mask |= 255u << shift;
    }
    // prefix is now the k-th largest value's bits: compact the keys with value >= it.
    if (threadIdx.x == 0) n_final = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n_surv; i += kMergeThreads) {
      const uint64_t key = survivors[i];
      if (static_cast<uint32_t>(key >> 32) >= prefix) {
        const int pos = atomicAdd(&n_final, 1);
        if (pos < kMergeThreads) finals[pos] = key;
      }
    }
    __syncthreads();
    if (n_final <= kMergeThreads) {
      rank_and_write(finals, n_final);
      return;
    }
    // Over 256 exact ties at the k-th value: sort the survivors below.
  }

  uint64_t best[E];
#pragma unroll
  for (int e = 0; e < E; ++e) best[e] = kEmptyKey;
  auto merge_if_useful = [&](const uint64_t(&in)[E]) {
    // A sorted list whose best key does not beat the current k-th best cannot change
    // the top k.
    const uint64_t kth = __shfl_sync(0xffffffffu, (k - 1) < 32 ? best[0] : best[E - 1], (k - 1) % 32);
    const uint64_t top = __shfl_sync(0xffffffffu, in[0], 0);
    if (top > kth) warp_merge_topk<E>(best, in, lane);
  };
  if (n_surv <= kMergeCapacity) {
    // Chunks of 64 survivors: warp sort, then merge into the warp's running top list.
    for (int c = warp * 32 * E; c < n_surv; c += kWarps * 32 * E) {
      uint64_t in[E];
#pragma unroll
      for (int e = 0; e < E; ++e) in[e] = c + e * 32 + lane < n_surv ? survivors[c + e * 32 + lane] : kEmptyKey;
      warp_sort_desc<E>(in, lane);
      merge_if_useful(in);
    }
  } else {
    // Fallback: merge the sorted block lists themselves.
    for (int b = warp; b < nblk; b += kWarps) {
      uint64_t in[E];
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int s = e * 32 + lane;
        in[e] = s < kc ? rows[static_cast<int64_t>(b) * kc + s] : kEmptyKey;
      }
      merge_if_useful(in);
    }
  }
  // Tree of merges across warps through shared memory.
#pragma unroll
  for (int e = 0; e < E; ++e) lists[warp][e * 32 + lane] = best[e];
  for (int active = kWarps / 2; active >= 1; active /= 2) {
    __syncthreads();
    if (warp < active) {
      uint64_t in[E];
#pragma unroll
      for (int e = 0; e < E; ++e) in[e] = lists[warp + active][e * 32 + lane];
      merge_if_useful(in);
#pragma unroll
      for (int e = 0; e < E; ++e) lists[warp][e * 32 + lane] = best[e];
    }
  }
  if (warp == 0) {
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (e * 32 + lane < k) write(e * 32 + lane, best[e]);  // n_surv > 256 >= k: all real
  }
}

}  // namespace frspec
