// Tree attention on Hopper tensor cores (wgmma, sm_90a), head_dim 128 or 64: the structure of the
// warp-specialised APB kernel (apb_attention_sm90.cuh) over tree_attention_kernel's work
// split. A CTA owns 128 packed (node, query head) rows of one KV head -- the G query heads
// of consecutive nodes, so one K/V tile serves all of them -- and one split of the keys.
// Warpgroup 0 produces: one thread loads the Q rows by TMA (where G divides 128; else the
// 128 threads copy them with cp.async: 1-8% slower at 770-4K keys, bench/NOTES.md tree v11),
// two threads stream the K and V tiles (128 or 176 keys) through kStages-deep TMA rings.
// Warpgroups 1 and 2 each own 64 rows and take turns issuing their GEMMs (ping-pong), so one's softmax runs under the
// other's tensor-core work; with kOverlap a consumer issues its P V of tile j-1 right behind
// its Q K^T of tile j (FlashAttention-3's intra-warpgroup overlap in the source; ptxas
// waits for that P V before the softmax, see apb_attention_sm90.cuh). With one split each
// consumer warpgroup stores its rows of out by TMA from its own Q rows (G | 64). Splits write
// fp32 partials, which the merge kernel merges; where the splits of a row tile are launched as
// a cluster (<= 8; FRSPEC_TREE_CLUSTER=1, for measurement) each CTA instead merges a share
// of the rows after a cluster barrier.
#pragma once

#include <cuda.h>  // CUtensorMap (the type only)

#include "frspec/attention_sm90.cuh"
#include "frspec/tree_attention.cuh"

namespace frspec {

constexpr int kTwRows = 128;  // packed rows per CTA: 2 consumer warpgroups x 64
constexpr int kTwThreads = 384;
constexpr int kTwMaxCluster = 8;
constexpr int kTwShortKeys = 3072;  // caches up to this: about two key tiles per split
constexpr int kTwMaxWaveSplits = 16;  // split counts the multi-wave rule considers
// Bytes of one K or V tile of `keys` keys x head_dim d (d / 64 [keys x 64] slabs).
constexpr size_t tw_tile_bytes(int keys, int d = 128) { return size_t(keys) * d * 2; }
// Q ([128 x d]), K x kStages, V x kStages (+ 1024 alignment, + mbarriers)
constexpr size_t tw_smem_bytes(int stages, int keys, int d = 128) {
  return size_t(d / 64) * kWgSlab + 2 * size_t(stages) * tw_tile_bytes(keys, d) + 1024 + 128;
}

__device__ __forceinline__ void cluster_arrive_wait() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}

// Visibility of the 64 keys with tree indices ts .. ts + 63 (t = key - prefix) for one query
// row: bit j set when ts + j < tree_len (= the split's end - prefix) and the key is a prefix
// key (t < 0) or an ancestor-or-self tree node (its bit in the row's packed mask of W words).
__device__ __forceinline__ uint64_t tree_visibility_word(const uint64_t* mrow, int W, int ts, int tree_len) {
  auto word = [&](int i) -> uint64_t { return i < 0 ? ~0ull : (i < W ? mrow[i] : 0ull); };
  const int lo = ts >> 6, sh = ts & 63;  // (floor division: ts may be negative)
  const uint64_t a = word(lo);
  const uint64_t v = sh ? (a >> sh) | (word(lo + 1) << (64 - sh)) : a;
  const int keep = tree_len - ts;  // bits [0, keep) may be visible
  return keep <= 0 ? 0ull : (keep < 64 ? v & ((1ull << keep) - 1) : v);
}

// Packed row r of a KV head's tile space (node r / G, query head h G + r % G) -> its row of
// out / lse ([B, N, Hq]).
__device__ __forceinline__ int64_t tw_out_row(const TreeAttnParams& p, int b, int h, int G, int r) {
  return (static_cast<int64_t>(b) * p.N + r / G) * p.Hq + h * G + r % G;
}

template <typename T, int kStages, bool kOverlap, int kTwKeys, int kD = 128>
__global__ void __launch_bounds__(kTwThreads, 1)
    tree_attention_ws_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                             const __grid_constant__ CUtensorMap tm_v, const __grid_constant__ CUtensorMap tm_o,
                             const TreeAttnParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int D = kD, kSlabs = kD / 64;  // 64-column slabs of a row
  constexpr int kSlab = kTwKeys * 128, kTile = kSlabs * kSlab, kQBytes = kSlabs * kWgSlab;
  extern __shared__ uint8_t tw_smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(tw_smem_raw) + 1023) & ~uintptr_t(1023));
  uint8_t* q_s = smem;
  uint8_t* k_s = smem + kQBytes;                    // [kStages]
  uint8_t* v_s = k_s + kStages * kTile;             // [kStages]
  uint64_t* bars = reinterpret_cast<uint64_t*>(v_s + kStages * kTile);
  uint64_t* q_full = bars;
  uint64_t* k_full = bars + 1;                 // [kStages]
  uint64_t* v_full = bars + 1 + kStages;       // [kStages]
  uint64_t* k_empty = bars + 1 + 2 * kStages;  // [kStages]
  uint64_t* v_empty = bars + 1 + 3 * kStages;  // [kStages]
  uint64_t* v_tail = bars + 1 + 4 * kStages;   // the first V tile's rows past the split zeroed

  const int wg = warpgroup_index();
  const int split = blockIdx.x % p.splits, row_tile = blockIdx.x / p.splits;  // a cluster: one row tile's splits
  const int h = blockIdx.y, b = blockIdx.z;
  const int G = p.Hq / p.Hkv, rows = p.N * G, r0 = row_tile * kTwRows;
  const int consumers = rows - r0 > 64 ? 2 : 1;  // a warpgroup with no valid row sits out

  pdl_wait();  // cache_len, q and the cache may come from the previous kernel
  const int prefix = p.cache_len[b];  // (its latency overlaps the barrier setup)
  if (threadIdx.x == 0) {
    mbar_init(q_full, p.q_tma ? 1 : 128);  // the TMA's expect_tx, or every producer thread after its Q rows
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&k_full[s], 1);
      mbar_init(&v_full[s], 1);
      mbar_init(&k_empty[s], 4 * consumers);  // one arrival per consumer warp
      mbar_init(&v_empty[s], 4 * consumers);
    }
    mbar_init(v_tail, 1);
    mbar_init_fence();
  }
  __syncthreads();
  const int total = min(prefix + p.T, p.L_max);
  const int tiles = (total + kTwKeys - 1) / kTwKeys;
  const int per_split = (tiles + p.splits - 1) / p.splits;
  const int kbeg = split * per_split * kTwKeys, kend = min(total, kbeg + per_split * kTwKeys);
  const int n_tiles = kbeg < kend ? (kend - kbeg + kTwKeys - 1) / kTwKeys : 0;
  // The first tile taken (the split's highest) may end past the split: its keys beyond kend
  // are masked, but P = 0 times a NaN value is NaN, and the cache holds anything there.
  const int k_last = kbeg + (n_tiles - 1) * kTwKeys;
  const bool partial_first = n_tiles > 0 && kend - k_last < kTwKeys;

  if (wg == 0) {  // ------------------------------------------------------------ producer
    setmaxnreg_dec<24>();  // (24 / 240 as FlashAttention-3 with two consumer warpgroups: 1.5-3.6% at 32K vs 40 / 232)
    const int row0 = b * p.L_max;  // the cache viewed as [B * L_max, Hkv * D] rows
    // K and V stream from two threads (warps 0 and 1), each on its own ring: a V stage is
    // released later than its K stage (after P V; with kOverlap only in the next tile's
    // turn), and one thread would hold the next K load back behind it.
    const bool is_k = threadIdx.x == 0, loader = threadIdx.x == 0 || threadIdx.x == 32;
    const void* tm = is_k ? static_cast<const void*>(&tm_k) : static_cast<const void*>(&tm_v);
    uint8_t* ring = is_k ? k_s : v_s;
    uint64_t* full = is_k ? k_full : v_full;
    uint64_t* empty = is_k ? k_empty : v_empty;
    auto issue_tile = [&](int it) {
      const int st = it % kStages;
      const uint32_t parity = ((it / kStages) - 1) & 1;  // of the consumers' release of this stage
      const int k0 = kbeg + (n_tiles - 1 - it) * kTwKeys;  // the partly masked tile first
      if (it >= kStages) mbar_wait(&empty[st], parity);
      mbar_arrive_expect_tx(&full[st], kTile);
#pragma unroll
      for (int sl = 0; sl < kSlabs; ++sl)
        tma_load_2d(ring + st * kTile + sl * kSlab, tm, h * D + 64 * sl, row0 + k0, &full[st]);
    };
    // At the start every CTA asks at once, so the order of the first loads matters where
    // both consumer warpgroups compute: K's first tile goes out while Q is in flight, V's
    // once K's has landed (the first Q K^T needs only Q and K; 0.1-1.6 us at 4K prefixes,
    // nothing at 32K: bench/NOTES.md tree v9), each ring's later stages once its first tile
    // has landed (a first tile queued behind everyone's second one starts the GEMMs later:
    // 0.3-1.0 us at 512-4K, tree v7). One-consumer tiles only stream (<= 64 rows; ~half the
    // SMs busy): there everything goes out at once (H100, B = 4 N = 16 / N = 1 4K 31.7 /
    // 30.0 -> 31.3 / 29.3 us; slower on two-consumer shapes, e.g. B = 1 N = 60 4K 17.1 ->
    // 17.6; tree v15).
    const bool stagger = consumers == 2;
    if (p.q_tma) {
      // Q: the row tile's 128 / G nodes x G heads as D / 64 64-column boxes (nodes past N zero)
      if (is_k) {
        mbar_arrive_expect_tx(q_full, kQBytes);
#pragma unroll
        for (int sl = 0; sl < kSlabs; ++sl)
          tma_load_4d(q_s + sl * kWgSlab, &tm_q, 64 * sl, h * G, row_tile * (kTwRows / G), b, q_full);
        if (n_tiles > 0) issue_tile(0);
      }
    } else {
      // Q: thread t copies packed row r0 + t (node (r0 + t) / G, head h G + (r0 + t) % G).
      const int r = r0 + static_cast<int>(threadIdx.x);
      const bool ok = r < rows;
      const int node = ok ? r / G : 0, qh = h * G + (ok ? r % G : 0);
      const T* src = static_cast<const T*>(p.q) + ((static_cast<int64_t>(b) * p.N + node) * p.Hq + qh) * D;
#pragma unroll
      for (int chunk = 0; chunk < D / 8; ++chunk)
        cp_async_16(q_s + (chunk >> 3) * kWgSlab + swizzle_128b(threadIdx.x, chunk & 7), src + chunk * 8, ok ? 16 : 0);
      cp_async_commit();
      if (is_k && n_tiles > 0) issue_tile(0);
      cp_async_wait<0>();
      fence_proxy_async_smem();
      mbar_arrive(q_full);
    }
    if (loader && !is_k && n_tiles > 0) {
      if (stagger) mbar_wait(&k_full[0], 0);
      issue_tile(0);
    }
    if (threadIdx.x / 32 == 1 && partial_first) {
      // Warp 1 zeroes those V rows once the tile landed (whole rows: the swizzle only
      // permutes within a row) and releases the tile on v_tail; the consumers wait there
      // for tile 0's P V instead of on v_full. Done here, off the consumers' path: zeroing
      // there cost a wait for V's first tile and a barrier between the two consumer
      // warpgroups right after the first softmax (bench/NOTES.md tree v10).
      __syncwarp();
      mbar_wait(&v_full[0], 0);
      const int lane = threadIdx.x % 32, zero_from = kend - k_last;
      for (int i = lane; i < (kTwKeys - zero_from) * (D / 8); i += 32) {
        const int r = zero_from + i / (D / 8), chunk = i % (D / 8);
        *reinterpret_cast<uint4*>(v_s + (chunk >> 3) * kSlab + r * 128 + (chunk & 7) * 16) = make_uint4(0, 0, 0, 0);
      }
      fence_proxy_async_smem();  // (generic-proxy writes, read by wgmma)
      __syncwarp();
      if (lane == 0) mbar_arrive(v_tail);
    }
    if (loader && n_tiles > 1) {
      if (stagger) mbar_wait(&full[0], 0);
      for (int it = 1; it < n_tiles; ++it) issue_tile(it);
    }
    __syncwarp();
    if (p.cluster > 1) cluster_arrive_wait();  // (every thread of the cluster takes part)
    return;
  }
  // ------------------------------------------------------------------------- consumers
  setmaxnreg_inc<240>();
  const int c = wg - 1, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int g = lane / 4, tig = lane % 4;
  const int lrow = c * 64 + warp * 16 + g;  // this thread's rows in the tile: lrow, lrow + 8
  const bool active = c < consumers;
  const float sl2 = p.scale_log2;
  float o[D / 2];  // this thread's 2 rows x D / 4 columns of the 64 x D output
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const uint64_t* mrow[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const int r = min(r0 + lrow + e * 8, rows - 1);
    mrow[e] = p.mask + (static_cast<int64_t>(b) * p.N + r / G) * p.W;
  }

  if (active && n_tiles > 0) {
    mbar_wait(q_full, 0);
    // V tile of loop step `it` (stage st, phase parity) landed, and for the first tile its
    // rows past the split zeroed (by the producer's warp 1).
    auto wait_v = [&](int it, int st, uint32_t parity) {
      if (it == 0 && partial_first)
        mbar_wait(v_tail, 0);
      else
        mbar_wait(&v_full[st], parity);
    };

    const bool pingpong = consumers == 2;
    if (pingpong && c == 1) named_bar_arrive(1, 256);  // consumer 0 goes first
    uint32_t pf[kTwKeys / 16][4];
    int prev_st = 0;
    uint32_t prev_parity = 0;
    auto issue_pv = [&](int stage) { wg_issue_pv<T>(o, pf, v_s + stage * kTile); };
    for (int it = 0; it < n_tiles; ++it) {
      const int st = it % kStages;
      const uint32_t parity = (it / kStages) & 1;
      const int k0 = kbeg + (n_tiles - 1 - it) * kTwKeys;
      // Keys past the split and tree keys that are not ancestors-or-self are masked: for this
      // thread's columns of the tile (8 jb + 2 tig + c), visibility bits 2 jb + c per row,
      // gathered here, before the scores occupy registers, from one visibility word per 64
      // keys; applied below by constant-position bit tests. (A mask-word load per score
      // was ~25 instructions and a serialised load each: ~1.5 us per masked tile.)
      const bool masked = k0 + kTwKeys > min(prefix, kend);
      uint64_t vis_bits[2] = {0ull, 0ull};
      if (masked) {
        constexpr int kWin = (8 * (kTwKeys / 8 - 1) + 2 + 63) / 64;
#pragma unroll
        for (int e = 0; e < 2; ++e)
#pragma unroll
          for (int w = 0; w < kWin; ++w) {
            const uint64_t v = tree_visibility_word(mrow[e], p.W, k0 + 2 * tig - prefix + 64 * w, kend - prefix);
#pragma unroll
            for (int jb = 8 * w; jb < min(8 * w + 8, kTwKeys / 8); ++jb)
#pragma unroll
              for (int c2 = 0; c2 < 2; ++c2) vis_bits[e] |= ((v >> (8 * jb + c2 - 64 * w)) & 1ull) << (2 * jb + c2);
          }
      }
      mbar_wait(&k_full[st], parity);
      if (pingpong) named_bar_sync(1 + c, 256);
      float s[kTwKeys / 2];
      wg_issue_qk<T, kTwKeys / 2, D>(s, q_s, c * 64 * 128, k_s + st * kTile);
      const bool other_turn = pingpong && !(c == 1 && it == n_tiles - 1);
      // kOverlap: tile j-1's P V goes out behind this Q K^T (one branch per path: ptxas
      // serialises wgmma where it cannot tell which groups are done).
      if (kOverlap && it > 0) {
        wait_v(it - 1, prev_st, prev_parity);
        issue_pv(prev_st);
        if (other_turn) named_bar_arrive(2 - c, 256);  // the other's turn
        wgmma_wait<1>();
      } else {
        if (other_turn) named_bar_arrive(2 - c, 256);
        wgmma_wait<0>();
      }
      wgmma_fence_operands(s);
      __syncwarp();
      if (lane == 0) mbar_arrive(&k_empty[st]);

      if (masked) {
#pragma unroll
        for (int i = 0; i < kTwKeys / 2; ++i)  // s[4 jb + 2 e + c]: bit 2 jb + c of row e
          if (!((vis_bits[(i >> 1) & 1] >> (2 * (i / 4) + (i & 1))) & 1ull)) s[i] = -INFINITY;
      }
      float alpha[2];
      wg_online_softmax_fma(s, m, l, alpha, sl2);
      if (kOverlap) wg_wait_pv(o, &v_empty[prev_st], it > 0);  // tile j-1's P V, before O is rescaled
      wg_rescale(o, alpha);
      wg_pack_p<T>(s, pf);
      if (!kOverlap) {
        wait_v(it, st, parity);
        issue_pv(st);
        wg_wait_pv(o, &v_empty[st], true);
      }
      prev_st = st;
      prev_parity = parity;
    }
    if (kOverlap) {  // the last tile's P V
      wait_v(n_tiles - 1, prev_st, prev_parity);
      issue_pv(prev_st);
      wg_wait_pv(o, nullptr, false);
    }
  }
  pdl_launch_dependents();

  // Epilogue. Row e of this thread: packed row r0 + lrow + 8 e.
  quad_sum(l);
  constexpr float kLn2 = 0.69314718055994531f;
  float inv[2], lse[2];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    inv[e] = l[e] > 0.f ? 1.f / l[e] : 0.f;
    lse[e] = l[e] > 0.f ? (m[e] + log2f(l[e])) * kLn2 : -INFINITY;
  }
  const bool o_leader = active && p.o_tma && threadIdx.x % 128 == 0;  // issues its warpgroup's TMA stores
  if (active && p.o_tma) {
    // One split: out through shared memory and TMA. This warpgroup's 64 rows are staged in
    // its own Q rows (read only by its own Q K^T, all done) in Q's swizzled layout, and one
    // thread stores them as two 8 KB boxes (64 packed rows x 64 columns). Stores straight
    // from the accumulator registers move 4 bytes of 8 rows per instruction (~8 L1
    // wavefronts each): H100, B = 4 N = 128 4K 59.1 -> 57.2 us. The fp32 partials of several
    // splits by TMA were up to 0.8 us slower (through the Q rows in two passes, or one through
    // a 64 KB stage beside the ring; bench/NOTES.md tree v13).
    uint8_t* stage = q_s + c * 64 * 128;     // rows c 64.. of slab 0; slab 1 at + kWgSlab
    const int lr0 = warp * 16 + g;           // this thread's rows in the warpgroup's 64
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int jb = 0; jb < D / 8; ++jb)
        *reinterpret_cast<uint32_t*>(stage + (jb >> 3) * kWgSlab + swizzle_128b(lr0 + 8 * e, jb & 7) + 4 * tig) =
            pack2<T>(o[4 * jb + 2 * e] * inv[e], o[4 * jb + 2 * e + 1] * inv[e]);
    fence_proxy_async_smem();
    named_bar_sync(3 + c, 128);
    if (o_leader) {
      const int node0 = (r0 + c * 64) / G;  // (G | 64)
#pragma unroll
      for (int sl = 0; sl < kSlabs; ++sl) tma_store_4d(&tm_o, stage + sl * kWgSlab, 64 * sl, h * G, node0, b);
      bulk_commit();
    }
  }
  if (active) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int r = r0 + lrow + 8 * e;
      const bool row_ok = r < rows;  // (no early exit: the partials' shuffles need the whole warp)
      const int64_t row = tw_out_row(p, b, h, G, min(r, rows - 1));
      if (p.splits == 1) {
        if (!row_ok) continue;
        T* out = static_cast<T*>(p.out) + row * D;
        if (!p.o_tma) {
#pragma unroll
          for (int jb = 0; jb < D / 8; ++jb)
            *reinterpret_cast<uint32_t*>(out + jb * 8 + 2 * tig) =
                pack2<T>(o[4 * jb + 2 * e] * inv[e], o[4 * jb + 2 * e + 1] * inv[e]);
        }
        if (tig == 0) p.lse[row] = lse[e];
      } else {
        const int64_t prow = static_cast<int64_t>(split) * p.B * p.N * p.Hq + row;
        float* out = p.part_out + prow * D;
        if (consumers == 2) {
          // 16-byte stores: of column blocks 2 jp and 2 jp + 1 (8 columns each, 2 per lane of
          // the quad) the even lanes store block 2 jp and the odd ones block 2 jp + 1, 4 columns
          // each, taking the pair they lack from the neighbouring lane: half the store
          // instructions of 8-byte stores (H100, B = 1 N = 128 / 60 4K 22.7 / 17.1 -> 22.1 /
          // 16.7 us). With one consumer warpgroup the shuffles cost more than they save (B = 4
          // N = 1 4K 30.0 -> 30.6), so it keeps 8-byte stores (bench/NOTES.md tree v14).
          const bool odd = tig & 1;
#pragma unroll
          for (int jp = 0; jp < D / 16; ++jp) {
            const float a0 = o[8 * jp + 2 * e] * inv[e], a1 = o[8 * jp + 2 * e + 1] * inv[e];
            const float b0 = o[8 * jp + 4 + 2 * e] * inv[e], b1 = o[8 * jp + 4 + 2 * e + 1] * inv[e];
            const float x0 = __shfl_xor_sync(0xffffffffu, odd ? a0 : b0, 1);
            const float x1 = __shfl_xor_sync(0xffffffffu, odd ? a1 : b1, 1);
            const float4 v = odd ? make_float4(x0, x1, b0, b1) : make_float4(a0, a1, x0, x1);
            if (row_ok) *reinterpret_cast<float4*>(out + 8 * (2 * jp + (odd ? 1 : 0)) + 2 * (tig & 2)) = v;
          }
        } else if (row_ok) {
#pragma unroll
          for (int jb = 0; jb < D / 8; ++jb)
            *reinterpret_cast<float2*>(out + jb * 8 + 2 * tig) =
                make_float2(o[4 * jb + 2 * e] * inv[e], o[4 * jb + 2 * e + 1] * inv[e]);
        }
        if (row_ok && tig == 0) p.part_lse[prow] = lse[e];
      }
    }
  }
  if (o_leader) bulk_wait_read<0>();  // (shared memory must outlive the TMA's reads)
  if (p.cluster > 1) {
    // The cluster is this row tile's splits (rank = split): once every split's partial rows
    // are written (the barrier orders them at cluster scope), each CTA merges a share of the
    // rows, reading them from L2. (The exchange through distributed shared memory this
    // replaced measured the same, 4K N = 60 20.0-20.5 vs 20.2 us, with a staging copy and a
    // second cluster barrier.)
    cluster_arrive_wait();
    const int n = p.cluster, rank = static_cast<int>(cluster_rank());
    const int valid = min(kTwRows, rows - r0), per = (valid + n - 1) / n;
    const int lr_beg = rank * per, lr_end = min(valid, lr_beg + per);
    const int64_t split_stride = static_cast<int64_t>(p.B) * p.N * p.Hq;
    const int cw = (threadIdx.x - 128) / 32;  // the 8 consumer warps, a row each in turn
    for (int lr = lr_beg + cw; lr < lr_end; lr += 8)
      merge_row<T, D / 32, true>(p.part_out, p.part_lse, n, split_stride, tw_out_row(p, b, h, G, r0 + lr), D, lane,
                            static_cast<T*>(p.out), p.lse);
  }
#else
  __trap();  // built without sm_90a: the launcher never picks this kernel
#endif
}

}  // namespace frspec
