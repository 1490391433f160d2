// int8 matmuls in float32 (the output embedding): y = x W^T, W as signed 8-bit codes with a scale d per
// group of 32 inputs (GGUF Q8_0's w = d q), row by row. int4 is in q4.cpp, a decoding step's attention in
// attend.cpp; this file binds all three.
//
// The arithmetic is float32 throughout, so the result is the float32 matmul of the dequantised weight
// up to the order of summation: greedy answers stay those of the float32 path (bfloat16 kernels
// round x, y and the scales, and that alone changes about one answer in ten).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
// RB rows of x against one output row of W: out[i * stride] = sum_g <x_i,g , d_g codes_g>.
template <int RB>
void rows(const float* x, int64_t k, const int8_t* q, const float* d, int64_t groups, float* out, int64_t stride) {
  // Two accumulators a row (each FMA waits for the last one into its register): for one row, one
  // chain would leave the FMA units idle most of the time.
  __m512 acc[RB], acc2[RB];
  for (int i = 0; i < RB; ++i) acc[i] = acc2[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const __m512 dv = _mm512_set1_ps(d[g]);  // the weights d q, once for all rows
    const __m512 a = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + g * 32)))), dv);
    const __m512 b =
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + g * 32 + 16)))), dv);
    for (int i = 0; i < RB; ++i) {
      const float* xr = x + i * k + g * 32;
      acc[i] = _mm512_fmadd_ps(a, _mm512_loadu_ps(xr), acc[i]);
      acc2[i] = _mm512_fmadd_ps(b, _mm512_loadu_ps(xr + 16), acc2[i]);
    }
  }
  for (int i = 0; i < RB; ++i) out[i * stride] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i], acc2[i]));
}
#else
// Portable: the compiler vectorises what it can (AVX2 and others).
template <int RB>
void rows(const float* x, int64_t k, const int8_t* q, const float* d, int64_t groups, float* out, int64_t stride) {
  float acc[RB][32] = {};
  for (int64_t g = 0; g < groups; ++g)
    for (int i = 0; i < RB; ++i) {
      const float* xr = x + i * k + g * 32;
      for (int j = 0; j < 32; ++j) acc[i][j] += (d[g] * float(q[g * 32 + j])) * xr[j];
    }
  for (int i = 0; i < RB; ++i) {
    float total = 0.f;
    for (int j = 0; j < 32; ++j) total += acc[i][j];
    out[i * stride] = total;
  }
}
#endif

}  // namespace

torch::Tensor q8_mm(torch::Tensor x, torch::Tensor q, torch::Tensor d) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2, "x must be float32 (rows, in_features)");
  x = x.contiguous();
  const int64_t rows_x = x.size(0), k = x.size(1), n = q.size(0), groups = k / 32;
  TORCH_CHECK(k % 32 == 0 && q.size(1) == k && q.scalar_type() == torch::kInt8, "codes do not match in_features");
  TORCH_CHECK(d.scalar_type() == torch::kFloat32 && d.size(0) == n && d.size(1) == groups, "scales' shape");
  auto y = torch::empty({rows_x, n}, x.options());
  const float* X = x.data_ptr<float>();
  const int8_t* Q = q.data_ptr<int8_t>();
  const float* D = d.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, n, 32, [&](int64_t n0, int64_t n1) {
    for (int64_t o = n0; o < n1; ++o) {
      int64_t r = 0;
      for (; r + 8 <= rows_x; r += 8) rows<8>(X + r * k, k, Q + o * k, D + o * groups, groups, Y + r * n + o, n);
      for (; r + 4 <= rows_x; r += 4) rows<4>(X + r * k, k, Q + o * k, D + o * groups, groups, Y + r * n + o, n);
      for (; r < rows_x; ++r) rows<1>(X + r * k, k, Q + o * k, D + o * groups, groups, Y + r * n + o, n);
    }
  });
  return y;
}

// q4.cpp
torch::Tensor q4_mm(torch::Tensor x, torch::Tensor codes, torch::Tensor scales, torch::Tensor minima, int64_t n);
bool tiles();
// attend.cpp
torch::Tensor decode_attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor cos, torch::Tensor sin,
                            torch::Tensor keys, torch::Tensor values, int64_t column, torch::Tensor starts,
                            double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("q4_mm", &q4_mm, "x (m, k) float32 times 4-bit codes in tiles of 16 outputs (q4.cpp) into n outputs");
  module.def("q8_mm", &q8_mm, "x (m, k) float32 times 8-bit codes (n, k) with scales (n, k/32)");
  module.def("decode_attend", &decode_attend, "one decoding step's attention over a pre-allocated cache (attend.cpp)");
  module.def("tiles", &tiles, "whether int4 matmuls of 2 rows or more run on AMX tiles");
}
