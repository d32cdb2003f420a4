// MKL's thread count for the products of one thread (MKL is torch's BLAS on x86; on a torch
// without it the symbol is absent and nothing changes).
#pragma once

// MKL's per-thread thread count (weak: absent from a torch without MKL).
extern "C" int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));

namespace fusedrnn::cpu {

// While alive, MKL's products called on the thread that made it run on that thread alone;
// the thread's earlier setting comes back after. For products inside a team of threads of
// our own: MKL would start threads inside ours.
class MklOnThisThread {
 public:
  MklOnThisThread()
      : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~MklOnThisThread() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  MklOnThisThread(const MklOnThisThread&) = delete;
  MklOnThisThread& operator=(const MklOnThisThread&) = delete;

 private:
  int previous_;
};

}  // namespace fusedrnn::cpu
