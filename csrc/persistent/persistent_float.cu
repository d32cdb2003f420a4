// The persistent kernels for float: one translation unit per dtype, so they build in parallel.
#include "persistent/launch.cuh"

namespace fusedrnn {
namespace persistent {
FUSEDRNN_INSTANTIATE_PERSISTENT(float)
}  // namespace persistent
}  // namespace fusedrnn
