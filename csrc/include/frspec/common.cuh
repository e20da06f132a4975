// Framework-free helpers shared by every kernel: dtype conversion, 16-byte vector
// access and error checking. No torch headers here: kernel translation units must
// compile with nvcc alone (fast builds, usable from the bench executables).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

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

// Programmatic dependent launch (sm_90). A kernel launched by launch_kernel() with PDL on
// may start while the previous kernel of the stream is still draining: it may only read
// data no earlier kernel writes (weights) before pdl_wait(), which returns once every
// earlier kernel has finished and its writes are visible. Every block must call pdl_wait()
// before writing anything or exiting, so that "this grid finished" keeps implying "all
// earlier grids finished" down the chain. pdl_launch_dependents() lets the next kernel's
// blocks be scheduled once every block of this grid has called it. Both are no-ops where
// the kernel was launched without PDL, and below sm_90.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// 2^x on the special-function unit with denormals flushed to zero (ex2.approx.ftz). Plain
// exp2f (no fast-math) is the same instruction wrapped in a denormal fix-up, several more
// instructions per call, which the softmax loops pay for every score; the only difference
// is for results below 2^-126, which become 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Whether launch_kernel() asks for PDL: on by default, FRSPEC_PDL=0 turns it off, and
// set_pdl_enabled() flips it (benchmarks compare both). Defined in csrc/kernels/launch.cu.
bool pdl_enabled();
void set_pdl_enabled(bool enabled);
// Whether the environment variable `name` is set to `value` (the measurement and test knobs
// FRSPEC_*, read per call). Defined in csrc/kernels/launch.cu.
bool env_is(const char* name, const char* value);
// Compute capability >= 9.0 (PDL and thread-block clusters exist) for the current device.
bool current_device_is_sm90_or_newer();

// Launches kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream
// serialisation when PDL is enabled (the kernel must follow pdl_wait()'s contract).
// cluster_x > 1 launches thread-block clusters of cluster_x CTAs along x (grid.x a multiple;
// sm_90+ only: callers check current_device_is_sm90_or_newer()). PDL is asked for only
// where it exists.
template <typename... Params, typename... Args>
cudaError_t launch_kernel_clustered(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                    cudaStream_t stream, unsigned cluster_x, Args&&... args) {
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (pdl_enabled() && current_device_is_sm90_or_newer()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_x > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster_x;
    attr[n].val.clusterDim.y = 1;
    attr[n++].val.clusterDim.z = 1;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = n;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args&&... args) {
  return launch_kernel_clustered(kernel, grid, block, smem, stream, 1u, std::forward<Args>(args)...);
}

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
