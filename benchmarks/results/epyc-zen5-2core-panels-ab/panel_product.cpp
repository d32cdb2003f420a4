#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>
#include <chrono>
// One thread: out (B, m) = a (B, k) @ W (k, m) on ATen's float32 brgemm, W row-major with
// a row stride of m + pad (P = 0; tiles 256 columns wide) or in panels of P columns
// ((m / P, k, P); tiles P wide); k in blocks of 512. Returns microseconds per product.
double run(int64_t B, int64_t m, int64_t k, int64_t P, int reps, int64_t pad) {
  auto a = torch::randn({B, k});
  auto wfull = torch::randn({k, m + pad}); auto w = wfull.narrow(1, 0, m); const int64_t ldw = m + pad;
  const int64_t tw = P ? P : 256;
  auto wp = torch::empty({m / tw, k, tw});
  for (int64_t j = 0; j < m / tw; ++j) wp[j].copy_(w.narrow(1, j * tw, tw));
  auto out = torch::empty({B, m});
  const float* ap = a.data_ptr<float>(); float* op = out.data_ptr<float>();
  auto once = [&] {
    for (int64_t j = 0; j < m; j += tw) {
      for (int64_t p = 0; p < k; p += 512) {
        int64_t depth = std::min<int64_t>(512, k - p);
        const float* b = P ? wp.data_ptr<float>() + (j / tw) * k * tw + p * tw : w.data_ptr<float>() + p * ldw + j;
        at::native::cpublas::brgemm(B, tw, depth, k, P ? tw : ldw, m, p > 0, ap + p, b, op + j, false);
      }
    }
  };
  for (int i = 0; i < 5; ++i) once();
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) once();
  auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::micro>(t1 - t0).count() / reps;
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("run", &run); }
