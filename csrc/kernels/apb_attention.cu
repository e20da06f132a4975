// Instantiations and launcher of APB host attention (see frspec/apb_attention.cuh and
// frspec/apb_attention_sm90.cuh).
#include "frspec/apb_attention.cuh"
#include "frspec/apb_attention_sm90.cuh"
#include "frspec/ops.h"
#include "frspec/sm90_host.h"

namespace frspec {

template <typename T, int D>
static cudaError_t launch_apb(const ApbParams& p, cudaStream_t stream) {
  const size_t smem = ApbSmem<D>::kBytes;
  FRSPEC_RETURN_IF_ERROR(cudaFuncSetAttribute(apb_attention_kernel<T, D>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(p.Hq, p.q_tiles);  // heads fastest: the G heads of one KV head run side by side (L2 reuse)
  apb_attention_kernel<T, D><<<grid, kApbThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
static cudaError_t launch_apb_wgmma(ApbParams p, cudaStream_t stream) {
  FRSPEC_RETURN_IF_ERROR(cudaFuncSetAttribute(apb_attention_wgmma_kernel<T>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(kApbWgSmemBytes)));
  p.q_tiles = static_cast<int>(ceil_div(p.Tq, kApbWgRows));
  const dim3 grid(p.Hq, p.q_tiles);
  apb_attention_wgmma_kernel<T><<<grid, kApbWgThreads, kApbWgSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int kSched>
static cudaError_t launch_apb_ws(ApbParams p, int64_t Tq, int64_t Tk, cudaStream_t stream) {
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  CUtensorMap tq, tk, tv;
  if (!encode_rows_map(&tq, p.q, Tq, int64_t(p.Hq) * 128, bf16) ||
      !encode_rows_map(&tk, p.k, Tk, int64_t(p.Hkv) * 128, bf16) ||
      !encode_rows_map(&tv, p.v, Tk, int64_t(p.Hkv) * 128, bf16))
    return cudaErrorNotSupported;
  FRSPEC_RETURN_IF_ERROR(cudaFuncSetAttribute(apb_attention_ws_kernel<T, kSched>,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              static_cast<int>(kApbWsSmemBytes)));
  p.q_tiles = static_cast<int>(ceil_div(p.Tq, kApbWgRows));
  const dim3 grid(p.Hq, p.q_tiles);
  apb_attention_ws_kernel<T, kSched><<<grid, kApbWsThreads, kApbWsSmemBytes, stream>>>(tq, tk, tv, p);
  return cudaGetLastError();
}

// wgmma needs an sm_90a build and a compute-capability 9.0 device.
static bool wgmma_available() {
#ifdef FRSPEC_HAS_SM90A
  return sm90a_device();
#else
  return false;
#endif
}

cudaError_t apb_attention(const void* q, const void* k, const void* v, int64_t anchor_len, int64_t local_len,
                          int64_t passing_len, int64_t Hq, int64_t Hkv, int64_t D, float scale, DType dtype,
                          void* out, float* lse, cudaStream_t stream, ApbImpl impl) {
  const int64_t Tq = anchor_len + local_len, Tk = passing_len + Tq;
  if (anchor_len < 0 || local_len < 0 || passing_len < 0 || Hkv < 1 || Hq < 1 || Hq % Hkv != 0 ||
      (D != 64 && D != 128) || Tk * Hq * D >= (int64_t(1) << 40) || Tk >= (int64_t(1) << 30) || Hq > 65535)
    return cudaErrorInvalidValue;
  if (!is_aligned(q, 16) || !is_aligned(k, 16) || !is_aligned(v, 16) || !is_aligned(out, 16))
    return cudaErrorMisalignedAddress;
  if (Tq == 0) return cudaSuccess;
  ApbParams p{};
  p.q = q, p.k = k, p.v = v, p.out = out, p.lse = lse;
  p.Tq = static_cast<int>(Tq), p.Tk = static_cast<int>(Tk), p.Hq = static_cast<int>(Hq), p.Hkv = static_cast<int>(Hkv);
  p.anchor_len = static_cast<int>(anchor_len), p.passing_len = static_cast<int>(passing_len);
  p.q_tiles = static_cast<int>(ceil_div(Tq, kApbRows));
  if (p.q_tiles > 65535) return cudaErrorInvalidValue;
  p.scale_log2 = scale * 1.4426950408889634f;
  const bool bf16 = dtype == DType::kBFloat16;
  const bool wgmma_ok = D == 128 && wgmma_available();
  if (impl != ApbImpl::kAuto && impl != ApbImpl::kMma && !wgmma_ok) return cudaErrorNotSupported;
  if (wgmma_ok && impl == ApbImpl::kWgmma)
    return bf16 ? launch_apb_wgmma<__nv_bfloat16>(p, stream) : launch_apb_wgmma<__half>(p, stream);
  // auto = ping-pong + intra-warpgroup overlap: the best median on every 128K host measured
  // with the schedules interleaved (bench/apb_schedules.py, 5 rounds; bench/NOTES.md); the
  // spread within a run (10-25%) is larger than the gaps between schedules.
  if (wgmma_ok && impl == ApbImpl::kWgmmaWs)
    return bf16 ? launch_apb_ws<__nv_bfloat16, 0>(p, Tq, Tk, stream) : launch_apb_ws<__half, 0>(p, Tq, Tk, stream);
  if (wgmma_ok && impl == ApbImpl::kWgmmaPingpong)
    return bf16 ? launch_apb_ws<__nv_bfloat16, 1>(p, Tq, Tk, stream) : launch_apb_ws<__half, 1>(p, Tq, Tk, stream);
  if (wgmma_ok && impl == ApbImpl::kWgmmaPingpongWindows)
    return bf16 ? launch_apb_ws<__nv_bfloat16, 2>(p, Tq, Tk, stream) : launch_apb_ws<__half, 2>(p, Tq, Tk, stream);
  if (wgmma_ok && impl != ApbImpl::kMma)  // auto, kWgmmaPingpongOverlap
    return bf16 ? launch_apb_ws<__nv_bfloat16, 3>(p, Tq, Tk, stream) : launch_apb_ws<__half, 3>(p, Tq, Tk, stream);
  if (D == 128) return bf16 ? launch_apb<__nv_bfloat16, 128>(p, stream) : launch_apb<__half, 128>(p, stream);
  return bf16 ? launch_apb<__nv_bfloat16, 64>(p, stream) : launch_apb<__half, 64>(p, stream);
}

}  // namespace frspec
