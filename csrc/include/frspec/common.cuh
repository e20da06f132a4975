// Framework-free helpers shared by every kernel: dtype conversion, 16-byte vector
// access and error checking. No torch headers here: kernel translation units must
// compile with nvcc alone (fast builds, usable from the bench executables).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace frspec {

// Float conversion for the storage types we ship (fp16, bf16) and fp32.
template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// N elements of T held in registers and moved as one access (16 bytes for 8 x 16-bit).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];

  __device__ __forceinline__ void load(const T* p) { *this = *reinterpret_cast<const Vec*>(p); }
  // Read-only, non-coherent path: for inputs that no thread of this launch writes.
  __device__ __forceinline__ void load_nc(const T* p) {
    if constexpr (sizeof(Vec) == 16) {
      uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
      *this = *reinterpret_cast<Vec*>(&raw);
    } else {
      load(p);
    }
  }
  __device__ __forceinline__ void store(T* p) const { *reinterpret_cast<Vec*>(p) = *this; }
};

inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace frspec

// For host code that returns cudaError_t to its caller (launchers, bench executables).
#define FRSPEC_RETURN_IF_ERROR(expr)            \
  do {                                          \
    cudaError_t frspec_err_ = (expr);           \
    if (frspec_err_ != cudaSuccess) return frspec_err_; \
  } while (0)
