// Instantiations and launchers of tree attention (see frspec/tree_attention.cuh).
#include <algorithm>

#include "frspec/ops.h"
#include "frspec/sm90_host.h"
#include "frspec/tree_attention.cuh"
#include "frspec/tree_attention_sm90.cuh"

namespace frspec {

static int num_sms() {
  static int sms = [] {
    int dev = 0, n = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n;
  }();
  return sms;
}

// One-node trees with few query heads per KV head take tree_decode_kernel.
static bool uses_decode_kernel(int64_t N, int64_t Hq, int64_t Hkv) { return N == 1 && Hq / Hkv <= kTdMaxG; }

static bool is_wgmma(TreeAttnImpl impl) { return impl == TreeAttnImpl::kWgmma || impl == TreeAttnImpl::kWgmmaSerial; }

// The kernel an impl request resolves to: kMma or kWgmma, kAuto if the request cannot be met.
static TreeAttnImpl resolve_impl(TreeAttnImpl impl, int64_t B, int64_t N, int64_t Hq, int64_t Hkv, int64_t D,
                                 int64_t L_max) {
#ifdef FRSPEC_HAS_SM90A
  // (TMA row coordinates are 32-bit: the cache is addressed as B * L_max rows)
  // (head_dim 64 only with the overlap schedule: the serial one is kept for measurement at 128)
  const bool wgmma_ok = (D == 128 || (D == 64 && impl != TreeAttnImpl::kWgmmaSerial)) &&
                        B * L_max < (int64_t(1) << 31) && sm90a_device();
#else
  const bool wgmma_ok = false;
#endif
  if (is_wgmma(impl)) return wgmma_ok ? impl : TreeAttnImpl::kAuto;
  if (impl == TreeAttnImpl::kMma) return impl;
  // wgmma measured faster on every multi-node shape of the benchmark (H100, 2026-11-25),
  // N = 16 included. One-node trees (decode steps) too once there are more than ~1K keys in
  // all (H100, 2026-11-26, vs the decode kernel: B = 1 2K / 16K / 32K keys 14.0 / 44.9 / 75.7
  // -> 11.4 / 30.3 / 53.0 us, B = 4 512 keys 22.1 -> 11.1, B = 64 1K 322 -> 105; equal at B =
  // 1, 1K; slower at B = 1 128 / 512 keys: 5.7 / 8.0 vs 9.2 / 9.7 us, the decode kernel's
  // smaller fixed cost).
  const bool wgmma_wins = N > 1 || Hq / Hkv > kTdMaxG || B * L_max > 1024;
  return wgmma_ok && wgmma_wins ? TreeAttnImpl::kWgmma : TreeAttnImpl::kMma;
}

// Keys per tile of the wgmma kernel (overlap schedule): FlashAttention-3's non-causal width,
// 176, where each split has >= 4096 keys and both consumer warpgroups have rows; else 128.
// Interleaved A/B on an H100 (bench/NOTES.md, tree v8 and after): at 32K 176 is equal or
// faster (B = 4, N = 128 502.7 vs 481.5 us; first version 4-8% on all four 32K shapes); from
// 1K to 8K keys 128 is (B = 1, N = 60 4K 19.5 vs 20.5 us, N = 128 8K 40.1 vs 42.2; likely the
// larger first tiles arriving later). FRSPEC_TREE_KEYS=128 / 176 forces one (read per call; for
// measurement and tests). Head_dim 64 takes 128 (one instantiation).
static int ws_keys(int64_t N, int64_t Hq, int64_t Hkv, int64_t D, int64_t L_max, int64_t splits) {
  if (D == 64) return 128;
  if (env_is("FRSPEC_TREE_KEYS", "176")) return 176;
  if (env_is("FRSPEC_TREE_KEYS", "128")) return 128;
  return N * (Hq / Hkv) > 64 && L_max >= 4096 * splits ? 176 : 128;
}

// How many thread-block clusters of `size` CTAs of the wgmma kernel fit on the GPU at once.
template <typename T, int kStages, int kKeys>
static int ws_max_active_clusters(int size) {
  static int cache[kTwMaxCluster + 1] = {};
  if (cache[size] == 0) {
    int n = 0;
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = size, attr.val.clusterDim.y = 1, attr.val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(size), cfg.blockDim = dim3(kTwThreads), cfg.dynamicSmemBytes = tw_smem_bytes(kStages, kKeys);
    cfg.attrs = &attr, cfg.numAttrs = 1;
    if (cudaFuncSetAttribute(tree_attention_ws_kernel<T, kStages, true, kKeys>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(tw_smem_bytes(kStages, kKeys))) != cudaSuccess ||
        cudaOccupancyMaxActiveClusters(&n, tree_attention_ws_kernel<T, kStages, true, kKeys>, &cfg) != cudaSuccess)
      n = -1;  // unknown: treated as "does not fit"
    cache[size] = n;
  }
  return cache[size];
}

template <typename T, int D>
static int ctas_per_sm() {
  static int n = [] {
    int blocks = 1;
    const size_t smem = TaSmem<D>::kBytes;
    if (cudaFuncSetAttribute(tree_attention_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, tree_attention_kernel<T, D>, kTaThreads, smem) !=
            cudaSuccess)
      blocks = 1;
    return std::max(blocks, 1);
  }();
  return n;
}

// Whether `ctas` thread-block clusters of `size` CTAs of the wgmma kernel run all at once.
// (with either tile width's shared memory: both take one CTA per SM)
template <typename T>
static bool ws_clusters_fit(int64_t ctas, int size) {
  return ctas <= ws_max_active_clusters<T, 2, 128>(size);
}

// Modelled time (us) of the wgmma kernel plus the merge kernel with `s` splits, for the
// split count of long caches where the tile's two consumer warpgroups have rows. One CTA
// per SM, so ctas x s CTAs run in ceil(ctas x s / SMs) waves; each wave costs its CTAs'
// tiles (ceil(tiles / s) each) plus ~4 us of start-up and epilogue; the merge reads and
// writes s fp32 partials per row. Constants fitted on an H100 (2026-11-26, bench/NOTES.md
// tree v9: within ~10% of 40 measured (B, N, prefix, splits) points, the ranking right):
// 2.3 / 1.7 us per 176- / 128-key tile, 3 TB/s for the partials.
static double ws_model_us(int64_t B, int64_t N, int64_t Hq, int64_t Hkv, int64_t D, int64_t L_max, int64_t ctas,
                          int64_t s) {
  const int keys = ws_keys(N, Hq, Hkv, D, L_max, s);
  const double per_tile = keys == 176 ? 2.3 : 1.7;
  const int64_t waves = ceil_div(ctas * s, static_cast<int64_t>(num_sms()));
  double us = static_cast<double>(waves) * (static_cast<double>(ceil_div(ceil_div(L_max, keys), s)) * per_tile + 4.0);
  if (s > 1) us += 3.0 + static_cast<double>(s * B * N * Hq) * (D + 1) * 4 * 2 / 3.0e6;
  return us;
}

int tree_attention_num_splits(int64_t B, int64_t N, int64_t Hq, int64_t Hkv, int64_t D, int64_t L_max, DType dtype,
                              int64_t requested, TreeAttnImpl impl) {
  impl = resolve_impl(impl, B, N, Hq, Hkv, D, L_max);
  const bool ws = is_wgmma(impl);
  const int64_t key_tile = ws ? 128 : kTaKeys;  // (the split count decides the wgmma tile width)
  const int64_t max_tiles = ceil_div(L_max, key_tile);
  if (requested > 0) return static_cast<int>(std::min<int64_t>({requested, max_tiles, kMergeMaxSplits}));
  if (ws) {
    // One CTA per SM (the K/V ring takes ~200 KB): at most as many splits as fill one wave,
    // and at most 8; the splits merge in the merge kernel (the cluster merge measured equal or
    // slower wherever the split count is right: bench/NOTES.md tree v9, v10).
    const int64_t ctas = ceil_div(N * (Hq / Hkv), kTwRows) * Hkv * B;
    const int64_t want = std::max<int64_t>(1, std::min<int64_t>({num_sms() / ctas, max_tiles, kTwMaxCluster}));
    if (L_max <= kTwShortKeys) {
      // Short caches (a decode step's verification): about two key tiles per split. More
      // splits, each with one tile, cost more in start-up burst and merge than they save
      // (H100, 2026-11-26, B = 1 N = 60, best / this rule / the former one-wave clusters:
      // 512 keys 9.9 / 9.9 / 13.8 us, 770 10.2 / 10.2 / 12.3, 2048 13.9 / 14.6 / 15.0; B = 4
      // N = 60 770 16.8 / 16.8 / 20.9; N = 16 770 7.7 / 7.7 / 9.8; bench/NOTES.md tree v10).
      return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, ceil_div(max_tiles, 2))));
    }
    // One consumer warpgroup (rows <= 64): memory-bound. Above 8 rows, splits for about
    // half the SMs: ~64 CTAs streaming keep HBM as busy as a full wave, and fewer splits
    // write fewer partials (H100, 2026-11-26, N = 16, this rule vs one wave, 4K / 32K: B = 2
    // 19.6 / 95.8 vs 20.9 / 98.3 us, B = 4 32.6 / 180.4 vs 34.4 / 185.7, B = 8 53.2 / 350.1 vs
    // 56.2 / 359.4, B = 3 26.9 / 141.2 vs 28.0 / 143.9; slower at B = 5, 40.0 / 242.3 vs
    // 39.2 / 230.5, and B = 6 32K, 302.1 vs 294.0; bench/NOTES.md tree v11). Up to 8 rows
    // (one-node trees) a full wave measured faster (B = 4, N = 1 32K 181 vs 192 us at half).
    // So does every one-consumer tile at head_dim 64, whose 2-stage ring holds half the bytes
    // (H100, 2026-11-26, N = 16, half / one wave: B = 4 4K 21.5 / 20.0 us, 32K 115.2 / 98.1, B = 2
    // 4K 13.7 / 12.8, B = 8 4K 33.4 / 32.3; bench/NOTES.md tree v15).
    if (N * (Hq / Hkv) <= 64) {
      if (N * (Hq / Hkv) <= 8 || D == 64) return static_cast<int>(want);
      const int64_t half = (num_sms() / 2 + ctas / 2) / ctas;  // round(SMs / 2 / ctas)
      return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({half, max_tiles, kTwMaxCluster})));
    }
    // Where one wave leaves SMs idle (ctas not dividing the SM count: B = 3, 5, 6, ...,
    // up to a third of them), more splits in several waves can finish sooner: take the
    // split count the model times fastest if it beats the one-wave count by >= 5% (the
    // model's error).
    const double one_wave = ws_model_us(B, N, Hq, Hkv, D, L_max, ctas, want);
    int64_t best = want;
    double best_us = one_wave;
    for (int64_t s = 1; s <= std::min<int64_t>(max_tiles, kTwMaxWaveSplits); ++s) {
      const double us = ws_model_us(B, N, Hq, Hkv, D, L_max, ctas, s);
      if (us < best_us) best = s, best_us = us;
    }
    return static_cast<int>(best_us < 0.95 * one_wave ? best : want);
  }
  if (uses_decode_kernel(N, Hq, Hkv)) {
    // Up to kTdClusterKeys keys: one cluster of <= 8 splits per KV head, ~64+ keys each,
    // merged on chip (one kernel). Longer: >= 64 keys per split, at most 16 splits and
    // 4 x (SMs) CTAs, then the merge kernel. (H100, 2026-11-26, vs the earlier 4096-key
    // threshold and up to 2 waves / 64 splits: B = 1 4000 / 8192 / 16384 keys 20.9 / 35.5 /
    // 55.8 -> 18.9 / 29.1 / 45.0 us, B = 4 4000 / 8192 61.0 / 110.2 -> 53.4 / 88.6 us.)
    if (L_max <= kTdClusterKeys) return static_cast<int>(std::min<int64_t>(kTdMaxCluster, ceil_div(L_max, 64)));
    const int64_t by_keys = ceil_div(L_max, 64);
    const int64_t by_wave = std::max<int64_t>(1, 4 * num_sms() / (Hkv * B));
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({by_keys, by_wave, 16})));
  }
  const int64_t row_tiles = ceil_div(N * (Hq / Hkv), kTaRows);
  const int64_t ctas = row_tiles * Hkv * B;
  const bool bf16 = dtype == DType::kBFloat16;
  const int per_sm = D == 128 ? (bf16 ? ctas_per_sm<__nv_bfloat16, 128>() : ctas_per_sm<__half, 128>())
                              : (bf16 ? ctas_per_sm<__nv_bfloat16, 64>() : ctas_per_sm<__half, 64>());
  // As many splits as fit in one full wave (a partial second wave would cost a whole
  // wave's time), each split at least 4 key tiles, at most 64 splits.
  const int64_t want = static_cast<int64_t>(per_sm) * num_sms() / ctas;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, std::max<int64_t>(1, max_tiles / 4), 64})));
}

size_t tree_attention_workspace_bytes(int64_t splits, int64_t B, int64_t N, int64_t Hq, int64_t D) {
  if (splits <= 1) return 0;
  return static_cast<size_t>(splits * B * N * Hq) * (D + 1) * sizeof(float);
}

// The split partials (part_out / part_lse) merged into out / lse.
template <typename T>
static cudaError_t launch_merge(const TreeAttnParams& p, int D, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.N * p.Hq;
  return launch_kernel(tree_attention_merge_kernel<T>, dim3(static_cast<unsigned>(ceil_div(rows, kMergeWarps))),
                       dim3(kMergeWarps * 32), 0, stream, p.part_out, p.part_lse, p.splits, rows, D,
                       static_cast<T*>(p.out), p.lse);
}

template <typename T, int D>
static cudaError_t launch(TreeAttnParams p, cudaStream_t stream) {
  // The decode kernel sees one tree node, the query's own: a single query below a longer
  // tree (tree_len > 1, a drafting level of one beam) takes the MMA kernel, with the split
  // count the one-node rule gave (any count <= kMergeMaxSplits works there).
  if (uses_decode_kernel(p.N, p.Hq, p.Hkv) && p.T == p.N) {
    // up to kTdMaxCluster splits merge on chip in one kernel; more take the merge kernel below
    p.cluster = p.splits > 1 && p.splits <= kTdMaxCluster && current_device_is_sm90_or_newer() ? p.splits : 0;
    FRSPEC_RETURN_IF_ERROR(launch_kernel_clustered(tree_decode_kernel<T, D>, dim3(p.splits, p.Hkv, p.B),
                                                   dim3(kTdWarps * 32), 0, stream,
                                                   static_cast<unsigned>(p.cluster), p));
    if (p.cluster) return cudaSuccess;
  } else {
    const size_t smem = TaSmem<D>::kBytes;
    FRSPEC_RETURN_IF_ERROR(cudaFuncSetAttribute(tree_attention_kernel<T, D>,
                                                cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    const dim3 grid(p.row_tiles * p.splits, p.Hkv, p.B);
    FRSPEC_RETURN_IF_ERROR(launch_kernel(tree_attention_kernel<T, D>, grid, dim3(kTaThreads), smem, stream, p));
  }
  FRSPEC_RETURN_IF_ERROR(cudaGetLastError());
  if (p.splits > 1) return launch_merge<T>(p, D, stream);
  return cudaGetLastError();
}

template <typename T, int kStages, bool kOverlap, int kKeys, int kD = 128>
static cudaError_t launch_ws(TreeAttnParams p, cudaStream_t stream) {
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  CUtensorMap tq{}, tk, tv;  // tk, tv: the caches as [B * L_max, Hkv * D] rows; tq: q (below)
  if (!encode_rows_map(&tk, p.k, int64_t(p.B) * p.L_max, int64_t(p.Hkv) * kD, bf16, kKeys) ||
      !encode_rows_map(&tv, p.v, int64_t(p.B) * p.L_max, int64_t(p.Hkv) * kD, bf16, kKeys))
    return cudaErrorNotSupported;
  // Q by TMA where a row tile is whole nodes (G | kTwRows) and q is 16-byte aligned; else cp.async.
  // FRSPEC_TREE_Q_TMA=0 forces cp.async (read per launch; for measurement and tests).
  const int G = p.Hq / p.Hkv;
  p.q_tma = !env_is("FRSPEC_TREE_Q_TMA", "0") && is_aligned(p.q, 16) &&
            encode_heads_map(&tq, p.q, p.B, p.N, p.Hq, G, kTwRows, bf16, kD);
  // With one split the epilogue stores out by TMA where a consumer warpgroup's 64 rows are
  // whole nodes (G | 64, checked by the encoder as for Q). FRSPEC_TREE_O_TMA=0 forces the
  // stores from registers (read per launch; for measurement and tests).
  CUtensorMap to{};
  p.o_tma = !env_is("FRSPEC_TREE_O_TMA", "0") && p.splits == 1 && is_aligned(p.out, 16) &&
            encode_heads_map(&to, p.out, p.B, p.N, p.Hq, G, 64, bf16, kD);
  constexpr size_t smem = tw_smem_bytes(kStages, kKeys, kD);
  FRSPEC_RETURN_IF_ERROR(cudaFuncSetAttribute(tree_attention_ws_kernel<T, kStages, kOverlap, kKeys, kD>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  p.row_tiles = static_cast<int>(ceil_div(int64_t(p.N) * (p.Hq / p.Hkv), kTwRows));
  // Splits merge in the merge kernel; FRSPEC_TREE_CLUSTER=1 (read per launch; for measurement)
  // merges them in a thread-block cluster instead wherever one fits.
  const bool cluster_ok = env_is("FRSPEC_TREE_CLUSTER", "1");
  const int64_t ctas = int64_t(p.row_tiles) * p.Hkv * p.B;
  p.cluster = cluster_ok && p.splits > 1 && p.splits <= kTwMaxCluster &&
                      ws_clusters_fit<T>(ctas, p.splits)
                  ? p.splits
                  : 0;
  const dim3 grid(p.row_tiles * p.splits, p.Hkv, p.B);
  FRSPEC_RETURN_IF_ERROR(launch_kernel_clustered(tree_attention_ws_kernel<T, kStages, kOverlap, kKeys, kD>, grid,
                                                 dim3(kTwThreads), smem, stream, static_cast<unsigned>(p.cluster), tq, tk,
                                                 tv, to, p));
  if (p.splits > 1 && !p.cluster) return launch_merge<T>(p, kD, stream);
  return cudaGetLastError();
}

cudaError_t tree_attention(const void* q, const void* k, const void* v, const int32_t* cache_len,
                           const uint64_t* mask, int64_t B, int64_t N, int64_t Hq, int64_t Hkv, int64_t D,
                           int64_t L_max, float scale, int splits, DType dtype, void* workspace, void* out,
                           float* lse, cudaStream_t stream, TreeAttnImpl impl, int64_t tree_len) {
  const int64_t T = tree_len > 0 ? tree_len : N;
  if (B < 0 || B > 65535 || N < 1 || N > T || T > 1024 || Hkv < 1 || Hkv > 65535 || Hq % Hkv != 0 ||
      (D != 64 && D != 128) || L_max < T || splits < 1 || splits > kMergeMaxSplits)
    return cudaErrorInvalidValue;
  if (B == 0) return cudaSuccess;
  TreeAttnParams p{};
  p.q = q, p.k = k, p.v = v, p.cache_len = cache_len, p.mask = mask, p.out = out, p.lse = lse;
  p.part_out = static_cast<float*>(workspace);
  p.part_lse = splits > 1 ? p.part_out + static_cast<int64_t>(splits) * B * N * Hq * D : nullptr;
  p.B = static_cast<int>(B), p.N = static_cast<int>(N), p.Hq = static_cast<int>(Hq), p.Hkv = static_cast<int>(Hkv);
  p.D = static_cast<int>(D), p.L_max = static_cast<int>(L_max), p.W = static_cast<int>((T + 63) / 64);
  p.T = static_cast<int>(T);
  p.splits = splits;
  p.row_tiles = static_cast<int>(ceil_div(N * (Hq / Hkv), kTaRows));
  p.scale_log2 = scale * 1.4426950408889634f;
  const bool bf16 = dtype == DType::kBFloat16;
  impl = resolve_impl(impl, B, N, Hq, Hkv, D, L_max);
  if (impl == TreeAttnImpl::kAuto) return cudaErrorNotSupported;  // wgmma requested, not available
  if (is_wgmma(impl)) {
    if (!is_aligned(k, 16) || !is_aligned(v, 16)) return cudaErrorMisalignedAddress;
    if (impl == TreeAttnImpl::kWgmmaSerial)
      return bf16 ? launch_ws<__nv_bfloat16, 2, false, 128>(p, stream) : launch_ws<__half, 2, false, 128>(p, stream);
    if (D == 64)
      return bf16 ? launch_ws<__nv_bfloat16, 2, true, 128, 64>(p, stream) : launch_ws<__half, 2, true, 128, 64>(p, stream);
    if (ws_keys(N, Hq, Hkv, D, L_max, splits) == 176)
      return bf16 ? launch_ws<__nv_bfloat16, 2, true, 176>(p, stream) : launch_ws<__half, 2, true, 176>(p, stream);
    return bf16 ? launch_ws<__nv_bfloat16, 2, true, 128>(p, stream) : launch_ws<__half, 2, true, 128>(p, stream);
  }
  if (D == 128) return bf16 ? launch<__nv_bfloat16, 128>(p, stream) : launch<__half, 128>(p, stream);
  return bf16 ? launch<__nv_bfloat16, 64>(p, stream) : launch<__half, 64>(p, stream);
}

}  // namespace frspec
