// EAGLE-2 tree machinery after drafting: build the dynamic tree, verify it (greedy and
// lossless sampling), compact the accepted nodes' KV. One block per sequence for the
// tree ops (trees are small: N <= 1024 nodes, history <= 4096 candidates), everything on
// the GPU so a whole speculative step can live in one CUDA graph. Semantics:
// python/frspec_cuda/reference/tree.py.
#pragma once

#include "frspec/common.cuh"
#include "frspec/warp_sort.cuh"

namespace frspec {

constexpr int kTreeThreads = 1024;
constexpr int kTreeMaxNodes = 1024;
constexpr int kTreeMaxHistory = 4096;
constexpr int kSamplingMaxVocab = 1 << 18;  // tried-token bitmap in shared memory

// Candidates rank by (score desc, depth asc, index asc): larger key = better.
__device__ __forceinline__ uint64_t tree_rank_key(float score, int depth, int index) {
  return (static_cast<uint64_t>(ordered_bits(score)) << 32) |
         (static_cast<uint64_t>(255 - min(depth, 255)) << 24) | static_cast<uint64_t>(0xFFFFFF - index);
}

// Block-wide bitonic sort, descending, of n (a power of two) keys in shared memory.
__device__ inline void block_sort_desc(uint64_t* keys, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool lower_gets_max = (i & size) == 0;
          const uint64_t a = keys[i], b = keys[j];
          if (lower_gets_max ? (a < b) : (a > b)) {
            keys[i] = b;
            keys[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

// Dynamic shared memory: keys[m_pow2] u64 | parent[M] | depth[M] | node_of[M] | node_parent[N] i32.
__global__ void __launch_bounds__(kTreeThreads)
    build_dynamic_tree_kernel(const int64_t* __restrict__ hist_tokens, const int32_t* __restrict__ hist_parents,
                              const float* __restrict__ hist_scores, const int64_t* __restrict__ root_tokens,
                              const int32_t* __restrict__ cache_len, int M, int m_pow2, int N, int W,
                              int64_t* __restrict__ tokens, int32_t* __restrict__ parents,
                              int32_t* __restrict__ depth_out, int64_t* __restrict__ positions,
                              int32_t* __restrict__ history_index, uint64_t* __restrict__ mask) {
  extern __shared__ uint64_t tree_smem[];
  uint64_t* keys = tree_smem;
  int32_t* par = reinterpret_cast<int32_t*>(keys + m_pow2);
  int32_t* depth = par + M;
  int32_t* node_of = depth + M;
  int32_t* node_parent = node_of + M;
  const int b = blockIdx.x;
  const int64_t hb = static_cast<int64_t>(b) * M, nb = static_cast<int64_t>(b) * N;

  for (int i = threadIdx.x; i < M; i += blockDim.x) {
    const int p = hist_parents[hb + i];
    par[i] = (p >= 0 && p < i) ? p : -1;  // malformed parents (checked on the host) become root children
    node_of[i] = -1;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < m_pow2; i += blockDim.x) {
    uint64_t key = kEmptyKey;
    if (i < M) {
      int d = 1;
      for (int j = par[i]; j >= 0; j = par[j]) ++d;
      depth[i] = d;
      key = tree_rank_key(hist_scores[hb + i], d, i);
    }
    keys[i] = key;
  }
  __syncthreads();
  block_sort_desc(keys, m_pow2);
  for (int n = 1 + threadIdx.x; n < N; n += blockDim.x)
    node_of[0xFFFFFF - static_cast<int>(keys[n - 1] & 0xFFFFFF)] = n;
  __syncthreads();
  const int base = cache_len[b];
  for (int n = threadIdx.x; n < N; n += blockDim.x) {
    if (n == 0) {
      tokens[nb] = root_tokens[b];
      parents[nb] = -1;
      depth_out[nb] = 0;
      positions[nb] = base;
      history_index[nb] = -1;
      node_parent[0] = -1;
    } else {
      const int h = 0xFFFFFF - static_cast<int>(keys[n - 1] & 0xFFFFFF);
      const int ph = par[h];
      const int pn = ph < 0 ? 0 : max(node_of[ph], 0);  // selection is ancestor-closed
      tokens[nb + n] = hist_tokens[hb + h];
      parents[nb + n] = pn;
      depth_out[nb + n] = depth[h];
      positions[nb + n] = static_cast<int64_t>(base) + depth[h];
      history_index[nb + n] = h;
      node_parent[n] = pn;
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < N * W; idx += blockDim.x) {
    const int n = idx / W, w = idx % W;
    uint64_t word = 0;
    for (int j = n; j >= 0; j = node_parent[j])
      if (j / 64 == w) word |= uint64_t(1) << (j % 64);
    mask[(nb + n) * W + w] = word;
  }
}

__device__ __forceinline__ int clamp_parent(int p, int i) { return (i > 0 && p >= 0 && p < i) ? p : (i > 0 ? 0 : -1); }

// Writes accepted[b, :] (path root..best, -1 padded), accept_len and bonus; `best` and
// `best_depth` are block-uniform. par: node parents in shared memory.
__device__ inline void write_path(const int32_t* par, int N, int best, int best_depth, int32_t* accepted_b) {
  for (int i = threadIdx.x; i < N; i += blockDim.x) accepted_b[i] = -1;
  __syncthreads();
  if (threadIdx.x == 0) {
    int d = best_depth;
    for (int j = best; j >= 0; j = par[j]) accepted_b[d--] = j;
  }
}

__global__ void __launch_bounds__(kTreeThreads)
    verify_tree_greedy_kernel(const int64_t* __restrict__ tokens, const int32_t* __restrict__ parents,
                              const int64_t* __restrict__ target_argmax, int N, int32_t* __restrict__ accept_len,
                              int32_t* __restrict__ accepted, int64_t* __restrict__ bonus) {
  __shared__ int32_t par[kTreeMaxNodes];
  __shared__ bool correct[kTreeMaxNodes];
  __shared__ unsigned best_key;
  const int b = blockIdx.x;
  const int64_t nb = static_cast<int64_t>(b) * N;
  if (threadIdx.x == 0) best_key = 0;
  for (int i = threadIdx.x; i < N; i += blockDim.x) par[i] = clamp_parent(parents[nb + i], i);
  __syncthreads();
  for (int i = threadIdx.x; i < N; i += blockDim.x)
    correct[i] = i == 0 || tokens[nb + i] == target_argmax[nb + par[i]];
  __syncthreads();
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    bool good = true;
    int d = 0;
    for (int j = i; j > 0; j = par[j], ++d) good = good && correct[j];
    if (good) atomicMax(&best_key, (static_cast<unsigned>(d) << 16) | (0xFFFFu - i));  // deepest, then lowest index
  }
  __syncthreads();
  const int best = 0xFFFF - static_cast<int>(best_key & 0xFFFF), best_depth = static_cast<int>(best_key >> 16);
  write_path(par, N, best, best_depth, accepted + nb);
  if (threadIdx.x == 0) {
    accept_len[b] = best_depth + 1;
    bonus[b] = target_argmax[nb + best];
  }
}

// Inclusive block-wide prefix sum of doubles (blockDim.x a multiple of 32); `scratch`
// holds 32 doubles. Returns the inclusive sum for this thread; *total gets the block sum.
__device__ inline double block_inclusive_scan(double x, double* scratch, double* total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    double w = lane < nwarps ? scratch[lane] : 0.0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const double y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < nwarps) scratch[lane] = w;
  }
  __syncthreads();
  const double result = x + (warp > 0 ? scratch[warp - 1] : 0.0);
  *total = scratch[nwarps - 1];
  __syncthreads();  // scratch reusable
  return result;
}

__global__ void __launch_bounds__(kTreeThreads)
    verify_tree_sampling_kernel(const int64_t* __restrict__ tokens, const int32_t* __restrict__ parents,
                                const float* __restrict__ probs, const float* __restrict__ uniforms, int N,
                                int V, int32_t* __restrict__ accept_len, int32_t* __restrict__ accepted,
                                int64_t* __restrict__ bonus) {
  __shared__ int32_t par[kTreeMaxNodes];
  __shared__ uint32_t tried[kSamplingMaxVocab / 32];
  __shared__ double scratch[32];
  __shared__ int chosen, found;
  const int b = blockIdx.x;
  const int64_t nb = static_cast<int64_t>(b) * N;
  for (int i = threadIdx.x; i < N; i += blockDim.x) par[i] = clamp_parent(parents[nb + i], i);
  for (int w = threadIdx.x; w < (V + 31) / 32; w += blockDim.x) tried[w] = 0;
  __syncthreads();

  auto token_of = [&](int i) { return static_cast<int>(min(max(tokens[nb + i], int64_t(0)), int64_t(V - 1))); };
  int cur = 0, d = 0;
  double r = 0.0;
  while (true) {
    const float* p = probs + (nb + cur) * V;
    const double u = uniforms[nb + d];
    // Children of `cur` in index order; a token repeated among siblings counts once.
    const int i = threadIdx.x;  // N <= blockDim.x
    bool first_child = false;
    if (i < N && i > cur && par[i] == cur) {
      first_child = true;
      const int t = token_of(i);
      for (int j = cur + 1; j < i && first_child; ++j) first_child = !(par[j] == cur && token_of(j) == t);
    }
    double total;
    const double cum = block_inclusive_scan(first_child ? static_cast<double>(p[token_of(i)]) : 0.0, scratch, &total);
    if (threadIdx.x == 0) chosen = N;
    __syncthreads();
    if (first_child && u <= cum) atomicMin(&chosen, i);
    __syncthreads();
    const int c = chosen;
    if (c < N) {
      cur = c;
      ++d;
      continue;
    }
    // No child accepted: remember the tried tokens, sample the bonus from the rest.
    if (first_child) atomicOr(&tried[token_of(i) / 32], 1u << (token_of(i) % 32));
    r = u - total;
    break;
  }
  __syncthreads();
  // Residual sampling: the smallest untried token whose cumulative mass reaches r.
  const float* p = probs + (nb + cur) * V;
  const int chunk = (V + blockDim.x - 1) / blockDim.x;
  const int lo = threadIdx.x * chunk, hi = min(V, lo + chunk);
  auto is_tried = [&](int v) { return (tried[v / 32] >> (v % 32)) & 1u; };
  double local = 0.0;
  int last_nz = -1;
  for (int v = lo; v < hi; ++v)
    if (!is_tried(v)) {
      local += p[v];
      if (p[v] > 0.f) last_nz = v;
    }
  double total;
  const double incl = block_inclusive_scan(local, scratch, &total);
  if (threadIdx.x == 0) found = -1;
  __syncthreads();
  const double excl = incl - local;
  if (excl < r && r <= incl) {
    double acc = excl;
    for (int v = lo; v < hi; ++v)
      if (!is_tried(v)) {
        acc += p[v];
        if (acc >= r) {
          found = v;
          break;
        }
      }
  }
  __syncthreads();
  if (found < 0) {  // r above the total after rounding: the last untried token with mass
    if (threadIdx.x == 0) found = 0;
    __syncthreads();
    if (last_nz >= 0) atomicMax(&found, last_nz);
    __syncthreads();
  }
  int best_depth = 0;
  for (int j = cur; j > 0; j = par[j]) ++best_depth;
  write_path(par, N, cur, best_depth, accepted + nb);
  if (threadIdx.x == 0) {
    accept_len[b] = best_depth + 1;
    bonus[b] = found;
  }
}

// One block per (layer, k/v, sequence): positions in increasing order (a later source is
// never an earlier destination), a barrier between positions. The last block to finish
// advances cache_len and re-arms the counter.
template <typename Vec>
__global__ void compact_kv_cache_kernel(char* __restrict__ kv, int32_t* __restrict__ cache_len,
                                        const int32_t* __restrict__ accepted, const int32_t* __restrict__ accept_len,
                                        int B, int L, int N, int64_t row_bytes, unsigned* __restrict__ counter) {
  const int b = blockIdx.x % B;
  const int64_t plane = blockIdx.x / B;  // layer * 2 + kv
  const int base = cache_len[b];
  const int n = min(max(accept_len[b], 0), N);
  const int64_t vecs = row_bytes / static_cast<int64_t>(sizeof(Vec));
  char* seq = kv + (plane * B + b) * static_cast<int64_t>(L) * row_bytes;
  for (int i = 0; i < n; ++i) {
    const int node = accepted[static_cast<int64_t>(b) * N + i];
    const int src = base + node, dst = base + i;
    if (node != i && node >= 0 && src < L && dst < L) {
      const Vec* s = reinterpret_cast<const Vec*>(seq + src * row_bytes);
      Vec* t = reinterpret_cast<Vec*>(seq + dst * row_bytes);
      for (int64_t v = threadIdx.x; v < vecs; v += blockDim.x) t[v] = s[v];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(counter, 1u) == gridDim.x - 1) {
      for (int s = 0; s < B; ++s) cache_len[s] += min(max(accept_len[s], 0), N);
      *counter = 0;
      __threadfence();
    }
  }
}

}  // namespace frspec
