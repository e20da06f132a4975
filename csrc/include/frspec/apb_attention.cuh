// APB host attention (Huang et al., ACL 2025): Q = [anchor; local], K/V = [passing;
// anchor; local]. With P = passing_len and A = anchor_len, query row q sees key j iff
//     j <= P + q  and  (q >= A or j >= P)
// i.e. causal with a P-key offset, except that anchor rows never see the passing keys.
// (Local rows see all of passing and anchor because P + q >= P + A for q >= A.)
//
// FlashAttention-2 style forward on mma.sync: a CTA owns 128 query rows of one query head
// (8 warps x 16 rows, Q fragments kept in registers) and walks the key tiles its rows can
// see -- tiles the layout masks out entirely are never loaded -- with 64-key K/V tiles
// double-buffered in shared memory by cp.async. Element masking runs only on tiles that
// are not fully visible. Returns out and the natural-log LSE in fp32.
#pragma once

#include "frspec/common.cuh"
#include "frspec/mma.cuh"

namespace frspec {

constexpr int kApbRows = 128;  // query rows per CTA
constexpr int kApbKeys = 64;   // keys per tile
constexpr int kApbWarps = kApbRows / 16;
constexpr int kApbThreads = kApbWarps * 32;

template <int D>
struct ApbSmem {
  static constexpr int kStride = D + 8;  // padded row: conflict-free ldmatrix
  static constexpr int kTile = kApbKeys * kStride;
  static constexpr size_t kBytes = size_t(4) * kTile * 2;  // K, V x 2 stages (Q staged in the same space)
  static_assert(size_t(kApbRows) * kStride <= size_t(4) * kTile, "Q staging must fit the K/V buffers");
};

struct ApbParams {
  const void* q;  // [Tq, Hq, D]
  const void* k;  // [Tk, Hkv, D]
  const void* v;
  void* out;   // [Tq, Hq, D]
  float* lse;  // [Tq, Hq]
  int Tq, Tk, Hq, Hkv, anchor_len, passing_len, q_tiles;
  float scale_log2;  // softmax scale * log2(e)
};

// Key range [kbeg, kend) that some row of [q0, q_last] can see.
__host__ __device__ inline void apb_key_range(int q0, int q_last, int A, int P, int& kbeg, int& kend) {
  kend = P + q_last + 1;
  kbeg = q0 >= A ? 0 : (q_last < A ? P : 0);
}

template <typename T, int D>
__global__ void __launch_bounds__(kApbThreads, 1) apb_attention_kernel(const ApbParams p) {
  using S = ApbSmem<D>;
  extern __shared__ __align__(16) uint8_t apb_smem_raw[];
  T* smem = reinterpret_cast<T*>(apb_smem_raw);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
  const int hq = blockIdx.x, hk = hq / (p.Hq / p.Hkv);
  const int tile = p.q_tiles - 1 - static_cast<int>(blockIdx.y);  // longest rows first
  const int q0 = tile * kApbRows, q_last = min(q0 + kApbRows, p.Tq) - 1;
  const int A = p.anchor_len, P = p.passing_len;
  const int64_t q_stride = static_cast<int64_t>(p.Hq) * D, kv_stride = static_cast<int64_t>(p.Hkv) * D;

  // Stage this CTA's Q rows through shared memory (coalesced), then into A fragments.
  const T* qg = static_cast<const T*>(p.q) + static_cast<int64_t>(hq) * D;
  for (int c = threadIdx.x; c < kApbRows * (D / 8); c += kApbThreads) {
    const int r = c / (D / 8), col = (c % (D / 8)) * 8;
    const bool ok = q0 + r <= q_last;
    cp_async_16(smem + r * S::kStride + col, qg + static_cast<int64_t>(ok ? q0 + r : 0) * q_stride + col, ok ? 16 : 0);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks)
    ldmatrix_x4(qf[ks], smem + (warp * 16 + lane % 16) * S::kStride + ks * 16 + (lane / 16) * 8);
  __syncthreads();  // the staging space becomes the K/V buffers

  int kbeg, kend;
  apb_key_range(q0, q_last, A, P, kbeg, kend);
  const int n_tiles = (kend - kbeg + kApbKeys - 1) / kApbKeys;

  const T* kg = static_cast<const T*>(p.k) + static_cast<int64_t>(hk) * D;
  const T* vg = static_cast<const T*>(p.v) + static_cast<int64_t>(hk) * D;
  auto load_tile = [&](int j, int buf) {
    T* ks_ = smem + buf * 2 * S::kTile;
    T* vs_ = ks_ + S::kTile;
    const int k0 = kbeg + j * kApbKeys;
    for (int c = threadIdx.x; c < kApbKeys * (D / 8); c += kApbThreads) {
      const int r = c / (D / 8), col = (c % (D / 8)) * 8;
      const int key = k0 + r;
      const bool ok = key < kend;
      const int64_t off = static_cast<int64_t>(ok ? key : 0) * kv_stride + col;
      cp_async_16(ks_ + r * S::kStride + col, kg + off, ok ? 16 : 0);
      cp_async_16(vs_ + r * S::kStride + col, vg + off, ok ? 16 : 0);
    }
    cp_async_commit();
  };

  float o[D / 8][4];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  const int row_base = q0 + warp * 16 + g;  // rows row_base and row_base + 8

  // Walk tiles from the last (the causal diagonal, masked) to the first.
  int buf = 0;
  load_tile(n_tiles - 1, 0);
  for (int j = n_tiles - 1; j >= 0; --j) {
    if (j > 0) {
      load_tile(j - 1, buf ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* ks_ = smem + buf * 2 * S::kTile;
    const T* vs_ = ks_ + S::kTile;
    const int k0 = kbeg + j * kApbKeys;

    float s[kApbKeys / 8][4];
    qk_tile<T, kApbKeys, D>(s, qf, ks_, S::kStride, lane);
    // Fully visible to every row of the CTA: no per-element test.
    const bool full = k0 + kApbKeys - 1 <= P + q0 && (q0 >= A || k0 >= P) && k0 + kApbKeys <= kend;
    if (full) {
#pragma unroll
      for (int nt = 0; nt < kApbKeys / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[nt][c] *= p.scale_log2;
    } else {
#pragma unroll
      for (int nt = 0; nt < kApbKeys / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int key = k0 + nt * 8 + 2 * tig + (c & 1);
          const int q = row_base + (c >> 1) * 8;
          const bool ok = key < kend && key <= P + q && (q >= A || key >= P);
          s[nt][c] = ok ? s[nt][c] * p.scale_log2 : -INFINITY;
        }
    }
    online_softmax_pv_tile<T, kApbKeys, D>(s, m, l, o, vs_, S::kStride, lane);
    __syncthreads();  // everyone is done with this buffer before it is refilled
    buf ^= 1;
  }

  quad_sum(l);
  // Normalise and stage the 128 x D output tile in shared memory for 16-byte stores.
  T* os = smem;
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const float inv = l[e] > 0.f ? 1.f / l[e] : 0.f;
    const int r = warp * 16 + g + e * 8;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
      *reinterpret_cast<uint32_t*>(os + r * S::kStride + nt * 8 + 2 * tig) =
          pack2<T>(o[nt][2 * e] * inv, o[nt][2 * e + 1] * inv);
    const int q = row_base + e * 8;
    if (tig == 0 && q <= q_last) {
      constexpr float kLn2 = 0.69314718055994531f;
      p.lse[static_cast<int64_t>(q) * p.Hq + hq] = l[e] > 0.f ? (m[e] + log2f(l[e])) * kLn2 : -INFINITY;
    }
  }
  __syncthreads();
  T* og = static_cast<T*>(p.out) + static_cast<int64_t>(hq) * D;
  for (int c = threadIdx.x; c < kApbRows * (D / 8); c += kApbThreads) {
    const int r = c / (D / 8), col = (c % (D / 8)) * 8;
    if (q0 + r <= q_last)
      *reinterpret_cast<uint4*>(og + static_cast<int64_t>(q0 + r) * q_stride + col) =
          *reinterpret_cast<const uint4*>(os + r * S::kStride + col);
  }
}

}  // namespace frspec
