// Host-side helpers of the Hopper kernels (see frspec/sm90_host.h).
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include "frspec/sm90_host.h"

namespace frspec {

bool sm90a_device() {
  static const bool ok = [] {
    int dev = 0, major = 0, minor = 0;
    return cudaGetDevice(&dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
           minor == 0;
  }();
  return ok;
}

// The driver's tensor-map encoder, found through the runtime (no libcuda link needed).
static PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// One 16-bit, 128B-swizzled map of `rank` dims (dims[0] contiguous, strides in bytes for
// dims 1..rank-1), elements past any dim zero-filled on loads and dropped on stores. Both
// maps below are this call.
static bool encode_16bit_map(CUtensorMap* map, const void* base, unsigned rank, const cuuint64_t* dims,
                             const cuuint64_t* strides, const cuuint32_t* box, bool bf16) {
  const auto encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const cuuint32_t elem_strides[5] = {1, 1, 1, 1, 1};
  return encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, rank,
                const_cast<void*>(base), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

bool encode_rows_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, bool bf16, int box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  return encode_16bit_map(map, base, 2, dims, strides, box, bf16);
}

bool encode_heads_map(CUtensorMap* map, const void* base, int64_t B, int64_t N, int64_t Hq, int G, int tile_rows,
                      bool bf16, int head_dim) {
  if (G < 1 || tile_rows < G || tile_rows > 256 || tile_rows % G != 0 || (head_dim != 64 && head_dim != 128))
    return false;
  const cuuint64_t row = static_cast<cuuint64_t>(head_dim) * 2;  // bytes of one head's vector
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(Hq),
                              static_cast<cuuint64_t>(N), static_cast<cuuint64_t>(B)};
  const cuuint64_t strides[3] = {row, static_cast<cuuint64_t>(Hq) * row, static_cast<cuuint64_t>(N * Hq) * row};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(G), static_cast<cuuint32_t>(tile_rows / G), 1};
  return encode_16bit_map(map, base, 4, dims, strides, box, bf16);
}

}  // namespace frspec
