// Warp-wide bitonic sorting of 64-bit keys, descending, E keys per lane (32*E keys).
// Key slot s = e * 32 + lane: partners closer than 32 slots are exchanged by shuffles,
// farther ones sit in the same lane's registers. Loops are unrolled at compile time so
// the key arrays stay in registers.
#pragma once

#include <cstdint>

namespace frspec {

// Order-preserving float -> uint32 map (larger float -> larger integer).
__device__ __forceinline__ uint32_t ordered_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_ordered_bits(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// (value, index) -> key whose unsigned order is "value descending, then index ascending":
// the larger key is the better candidate. Key 0 is the empty slot (below every real key).
__device__ __forceinline__ uint64_t topk_key(float value, uint32_t index) {
  return (static_cast<uint64_t>(ordered_bits(value)) << 32) | (~index);
}
__device__ __forceinline__ float key_value(uint64_t key) {
  return from_ordered_bits(static_cast<uint32_t>(key >> 32));
}
__device__ __forceinline__ uint32_t key_index(uint64_t key) {
  return ~static_cast<uint32_t>(key & 0xffffffffu);
}
constexpr uint64_t kEmptyKey = 0;

// One compare-exchange stage of a bitonic network over 32*E slots.
template <int E>
__device__ __forceinline__ void bitonic_stage(uint64_t (&key)[E], int size, int stride, int lane) {
  if (stride >= 32) {
    const int estride = stride / 32;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int pe = e ^ estride;
      if (pe > e) {
        const int s = e * 32 + lane;
        const bool lower_gets_max = (s & size) == 0;
        const uint64_t a = key[e], b = key[pe];
        const bool swap = lower_gets_max ? (a < b) : (a > b);
        key[e] = swap ? b : a;
        key[pe] = swap ? a : b;
      }
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int s = e * 32 + lane;
      const uint64_t other = __shfl_xor_sync(0xffffffffu, key[e], stride);
      const bool lower_gets_max = (s & size) == 0;
      const bool is_lower = (s & stride) == 0;
      const bool take_max = is_lower == lower_gets_max;
      key[e] = take_max ? (key[e] > other ? key[e] : other) : (key[e] < other ? key[e] : other);
    }
  }
}

// Sort 32*E keys held by the warp, descending.
template <int E>
__device__ __forceinline__ void warp_sort_desc(uint64_t (&key)[E], int lane) {
  constexpr int N = 32 * E;
#pragma unroll
  for (int size = 2; size <= N; size <<= 1)
#pragma unroll
    for (int stride = size / 2; stride > 0; stride >>= 1) bitonic_stage<E>(key, size, stride, lane);
}

// `best` and `incoming` each sorted descending (32*E keys); afterwards `best` holds the
// top 32*E of their union, sorted descending. Max of best[i] and incoming[N-1-i] is a
// bitonic sequence holding the top N; one bitonic merge sorts it.
template <int E>
__device__ __forceinline__ void warp_merge_topk(uint64_t (&best)[E], const uint64_t (&incoming)[E],
                                                int lane) {
  constexpr int N = 32 * E;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const uint64_t rev = __shfl_sync(0xffffffffu, incoming[E - 1 - e], 31 - lane);
    best[e] = best[e] > rev ? best[e] : rev;
  }
#pragma unroll
  for (int stride = N / 2; stride > 0; stride >>= 1) bitonic_stage<E>(best, N, stride, lane);
}

}  // namespace frspec
