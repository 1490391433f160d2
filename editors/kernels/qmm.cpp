// Weight-only quantised matmuls in float32: y = x W^T, W kept in groups of 32 inputs.
//
// q4: 4-bit codes, a scale d and a minimum m per group (GGUF Q4_1's w = d q + m; the m term is each
//     group's minimum times x's sum over the group). Byte b of a group holds code b in its low nibble
//     and code b+16 in its high one.
// q8: signed 8-bit codes, a scale d per group (GGUF Q8_0's w = d q).
//
// The arithmetic is float32 throughout, so the result is the float32 matmul of the dequantised weight
// up to the order of summation: greedy answers stay those of the float32 path (bfloat16 kernels
// round x, y and the scales, and that alone changes about one answer in ten).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstdint>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// The 32 weights of group g, as floats before the scale: codes of q4 or q8.
struct Q4 {
  static constexpr int64_t bytes = 16;
  static inline void codes(const uint8_t* p, float* w) {
    for (int b = 0; b < 16; ++b) {
      w[b] = float(p[b] & 15);
      w[b + 16] = float(p[b] >> 4);
    }
  }
};
struct Q8 {
  static constexpr int64_t bytes = 32;
  static inline void codes(const uint8_t* p, float* w) {
    for (int b = 0; b < 32; ++b) w[b] = float(int8_t(p[b]));
  }
};

inline float minima(const float* m, const float* s, int64_t groups) {
  float total = 0.f;
  if (m != nullptr)
    for (int64_t g = 0; g < groups; ++g) total += m[g] * s[g];
  return total;
}

#if defined(__AVX512F__)
inline void load32(const uint8_t* p, Q4, __m512& a, __m512& b) {
  const __m128i bytes = _mm_loadu_si128((const __m128i*)p), mask = _mm_set1_epi8(15);
  a = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(bytes, mask)));
  b = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask)));
}
inline void load32(const uint8_t* p, Q8, __m512& a, __m512& b) {
  a = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
  b = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p + 16))));
}

// RB rows of x against one output row of W: out[i * stride] = sum_g <x_i,g , d_g codes_g> + m_g s_i,g
// (m, s: the row's minima and x's group sums; null for q8).
template <class Kind, int RB>
void rows(const float* x, int64_t k, const uint8_t* q, const float* d, const float* m, const float* s, int64_t groups,
          float* out, int64_t stride) {
  // Two accumulators a row (each FMA waits for the last one into its register): for one row, one
  // chain would leave the FMA units idle most of the time.
  __m512 acc[RB], acc2[RB];
  for (int i = 0; i < RB; ++i) acc[i] = acc2[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 a, b;
    load32(q + g * Kind::bytes, Kind{}, a, b);
    const __m512 dv = _mm512_set1_ps(d[g]);
    a = _mm512_mul_ps(a, dv);  // the weights d q, once for all rows
    b = _mm512_mul_ps(b, dv);
    for (int i = 0; i < RB; ++i) {
      const float* xr = x + i * k + g * 32;
      acc[i] = _mm512_fmadd_ps(a, _mm512_loadu_ps(xr), acc[i]);
      acc2[i] = _mm512_fmadd_ps(b, _mm512_loadu_ps(xr + 16), acc2[i]);
    }
  }
  for (int i = 0; i < RB; ++i)
    out[i * stride] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i], acc2[i])) + minima(m, s + i * groups, groups);
}
#else
// Portable: the compiler vectorises what it can (AVX2 and others).
template <class Kind, int RB>
void rows(const float* x, int64_t k, const uint8_t* q, const float* d, const float* m, const float* s, int64_t groups,
          float* out, int64_t stride) {
  float acc[RB][32] = {};
  float w[32];
  for (int64_t g = 0; g < groups; ++g) {
    Kind::codes(q + g * Kind::bytes, w);
    for (int i = 0; i < RB; ++i) {
      const float* xr = x + i * k + g * 32;
      for (int j = 0; j < 32; ++j) acc[i][j] += (d[g] * w[j]) * xr[j];
    }
  }
  for (int i = 0; i < RB; ++i) {
    float total = 0.f;
    for (int j = 0; j < 32; ++j) total += acc[i][j];
    out[i * stride] = total + minima(m, s + i * groups, groups);
  }
}
#endif

template <class Kind>
torch::Tensor matmul(torch::Tensor x, const torch::Tensor& q, const torch::Tensor& d, const torch::Tensor* m) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2, "x must be float32 (rows, in_features)");
  x = x.contiguous();
  const int64_t rows_x = x.size(0), k = x.size(1), n = q.size(0), groups = k / 32;
  TORCH_CHECK(k % 32 == 0 && q.size(1) == groups * Kind::bytes, "codes do not match in_features");
  TORCH_CHECK(d.scalar_type() == torch::kFloat32 && d.size(0) == n && d.size(1) == groups, "scales' shape");
  TORCH_CHECK(m == nullptr || (m->sizes() == d.sizes() && m->scalar_type() == torch::kFloat32), "minima's shape");
  auto y = torch::empty({rows_x, n}, x.options());
  const float* X = x.data_ptr<float>();
  std::vector<float> sums(m != nullptr ? rows_x * groups : 0);  // x's sum over each group
  for (size_t i = 0; i < sums.size(); ++i)
    for (int j = 0; j < 32; ++j) sums[i] += X[i * 32 + j];
  const uint8_t* Q = reinterpret_cast<const uint8_t*>(q.data_ptr());
  const float* D = d.data_ptr<float>();
  const float* M = m != nullptr ? m->data_ptr<float>() : nullptr;
  const float* S = sums.data();
  float* Y = y.data_ptr<float>();
  at::parallel_for(0, n, 32, [&](int64_t n0, int64_t n1) {
    for (int64_t o = n0; o < n1; ++o) {
      const uint8_t* qo = Q + o * groups * Kind::bytes;
      const float* dout = D + o * groups;
      const float* mo = M != nullptr ? M + o * groups : nullptr;
      int64_t r = 0;
      for (; r + 8 <= rows_x; r += 8) rows<Kind, 8>(X + r * k, k, qo, dout, mo, S + r * groups, groups, Y + r * n + o, n);
      for (; r + 4 <= rows_x; r += 4) rows<Kind, 4>(X + r * k, k, qo, dout, mo, S + r * groups, groups, Y + r * n + o, n);
      for (; r < rows_x; ++r) rows<Kind, 1>(X + r * k, k, qo, dout, mo, S + r * groups, groups, Y + r * n + o, n);
    }
  });
  return y;
}

}  // namespace

torch::Tensor q4_mm(torch::Tensor x, torch::Tensor q, torch::Tensor d, torch::Tensor m) {
  return matmul<Q4>(x, q, d, &m);
}
torch::Tensor q8_mm(torch::Tensor x, torch::Tensor q, torch::Tensor d) { return matmul<Q8>(x, q, d, nullptr); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("q4_mm", &q4_mm, "x (m, k) float32 times 4-bit codes (n, k/2) with scales and minima (n, k/32)");
  module.def("q8_mm", &q8_mm, "x (m, k) float32 times 8-bit codes (n, k) with scales (n, k/32)");
}
