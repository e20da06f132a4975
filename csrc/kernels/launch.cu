// The process-wide switch for programmatic dependent launch and the environment knobs (see
// frspec/common.cuh).
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "frspec/common.cuh"

namespace frspec {
namespace {
std::atomic<bool>& pdl_flag() {
  static std::atomic<bool> flag{!env_is("FRSPEC_PDL", "0")};
  return flag;
}
}  // namespace

bool env_is(const char* name, const char* value) {
  const char* env = std::getenv(name);
  return env != nullptr && std::strcmp(env, value) == 0;
}

bool pdl_enabled() { return pdl_flag().load(std::memory_order_relaxed); }
void set_pdl_enabled(bool enabled) { pdl_flag().store(enabled, std::memory_order_relaxed); }

bool current_device_is_sm90_or_newer() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> major[kMaxDevices] = {};  // 0 = not read yet
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return false;
  int m = major[dev].load(std::memory_order_relaxed);
  if (m == 0) {
    if (cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
    major[dev].store(m, std::memory_order_relaxed);
  }
  return m >= 9;
}

}  // namespace frspec
