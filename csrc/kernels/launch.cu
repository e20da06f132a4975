// The process-wide switch for programmatic dependent launch (see frspec/common.cuh).
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "frspec/common.cuh"

namespace frspec {
namespace {
std::atomic<bool>& pdl_flag() {
  static std::atomic<bool> flag{[] {
    const char* env = std::getenv("FRSPEC_PDL");
    return !(env && std::strcmp(env, "0") == 0);
  }()};
  return flag;
}
}  // namespace

bool pdl_enabled() { return pdl_flag().load(std::memory_order_relaxed); }
void set_pdl_enabled(bool enabled) { pdl_flag().store(enabled, std::memory_order_relaxed); }

}  // namespace frspec
