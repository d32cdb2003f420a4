// The persistent kernels for c10::Half: one translation unit per dtype, so they build in parallel.
#include "persistent/launch.cuh"

namespace fusedrnn {
namespace persistent {
FUSEDRNN_INSTANTIATE_PERSISTENT(c10::Half)
}  // namespace persistent
}  // namespace fusedrnn
