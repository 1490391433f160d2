// The extension's bindings: the weight-only matmuls of editors/quant.py (tiles.cpp) and a decoding
// step's attention (attend.cpp).
#include <torch/extension.h>

// tiles.cpp
torch::Tensor q4_mm(torch::Tensor x, torch::Tensor codes, torch::Tensor scales, torch::Tensor minima, int64_t n);
torch::Tensor q8_mm(torch::Tensor x, torch::Tensor codes, torch::Tensor scales, int64_t n);
bool tiles();
// attend.cpp
torch::Tensor decode_attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor cos, torch::Tensor sin,
                            torch::Tensor keys, torch::Tensor values, int64_t column, torch::Tensor starts,
                            double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("q4_mm", &q4_mm, "x (m, k) float32 times 4-bit codes in tiles of 16 outputs (tiles.cpp) into n outputs");
  module.def("q8_mm", &q8_mm, "x (m, k) float32 times 8-bit codes in tiles of 16 outputs (tiles.cpp) into n outputs");
  module.def("decode_attend", &decode_attend, "one decoding step's attention over a pre-allocated cache (attend.cpp)");
  module.def("tiles", &tiles, "whether matmuls of 2 rows or more run on AMX tiles");
}
