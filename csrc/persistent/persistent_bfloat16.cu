// The persistent kernels for c10::BFloat16: one translation unit per dtype, so they build in parallel.
#include "persistent/launch.cuh"

namespace fusedrnn {
namespace persistent {
FUSEDRNN_INSTANTIATE_PERSISTENT(c10::BFloat16)
}  // namespace persistent
}  // namespace fusedrnn
