// One decoding step's attention in a Llama block, every row at once: rotary on the new position's query
// and key, its key and value stored in the pre-allocated cache (editors/decoder.py LeanCache), then each
// row's softmax over its own cached positions only.
//
// Why a kernel: done with torch ops, a row's attention is a dozen small calls a layer (rotary, cache
// concatenation, one sdpa call a row, so that padding never enters a row's sums): a fifth of a step at
// 8 rows on the packaged model (docs/results.md, "Speed"). Here each (row, head) is computed alone, in
// the same order whatever its neighbours, so a row's attention is the same alone or in any batch.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t LANES = 16;  // partial sums of a dot product: one AVX-512 register (the compiler's choice elsewhere)

// q . k over d (a multiple of LANES), in a fixed order
inline float dot(const float* a, const float* b, int64_t d) {
  float acc[LANES] = {};
  for (int64_t j = 0; j < d; j += LANES)
    for (int64_t l = 0; l < LANES; ++l) acc[l] += a[j + l] * b[j + l];
  float s = 0.f;
  for (int64_t l = 0; l < LANES; ++l) s += acc[l];
  return s;
}

// x cos + rotate_half(x) sin (transformers' apply_rotary_pos_emb), rotate_half(x) = (-x2, x1)
inline void rotary(const float* x, const float* cos, const float* sin, float* out, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t j = 0; j < half; ++j) out[j] = x[j] * cos[j] - x[j + half] * sin[j];
  for (int64_t j = half; j < d; ++j) out[j] = x[j] * cos[j] + x[j - half] * sin[j];
}

}  // namespace

// q (rows, heads d), k and v (rows, kv d): the new position's projections. cos, sin (rows, d): its rotary
// angles. keys and values (rows, kv, capacity, d), last dimension contiguous: the new key and value go to
// `column`; row r attends over columns starts[r] .. column. Returns (rows, heads d).
torch::Tensor decode_attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor cos, torch::Tensor sin,
                            torch::Tensor keys, torch::Tensor values, int64_t column, torch::Tensor starts,
                            double scale) {
  const int64_t rows = q.size(0), kv = keys.size(1), d = keys.size(3), heads = q.size(1) / d;
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && keys.scalar_type() == torch::kFloat32 &&
                  values.scalar_type() == torch::kFloat32,
              "float32 only");
  TORCH_CHECK(d % LANES == 0 && heads % kv == 0 && q.size(1) == heads * d && k.size(1) == kv * d &&
                  v.size(1) == kv * d && cos.size(1) == d && keys.sizes() == values.sizes() && keys.size(0) == rows,
              "shapes of q, k, v, cos, sin and the cache do not agree");
  TORCH_CHECK(keys.stride(3) == 1 && values.stride(3) == 1 && keys.strides() == values.strides(),
              "the cache's last dimension must be contiguous");
  TORCH_CHECK(column >= 0 && column < keys.size(2) && starts.scalar_type() == torch::kInt64 && starts.numel() == rows,
              "column or starts out of range");
  q = q.contiguous(), k = k.contiguous(), v = v.contiguous(), cos = cos.contiguous(), sin = sin.contiguous();
  starts = starts.contiguous();
  const float *Q = q.data_ptr<float>(), *K = k.data_ptr<float>(), *V = v.data_ptr<float>();
  const float *C = cos.data_ptr<float>(), *S = sin.data_ptr<float>();
  const int64_t* first = starts.data_ptr<int64_t>();
  float *KC = keys.data_ptr<float>(), *VC = values.data_ptr<float>();
  const int64_t s0 = keys.stride(0), s1 = keys.stride(1), s2 = keys.stride(2);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < kv; ++h) {
      rotary(K + (r * kv + h) * d, C + r * d, S + r * d, KC + r * s0 + h * s1 + column * s2, d);
      std::copy_n(V + (r * kv + h) * d, d, VC + r * s0 + h * s1 + column * s2);
    }
  auto out = torch::empty({rows, heads * d}, q.options());
  float* O = out.data_ptr<float>();
  const int64_t group = heads / kv;
  // Threads only where the work outweighs waking them: a short cache is a few microseconds a layer.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / ((column + 1) * d));
  at::parallel_for(0, rows * heads, grain, [&](int64_t b, int64_t e) {
    std::vector<float> query(d), weights(column + 1);
    for (int64_t i = b; i < e; ++i) {
      const int64_t r = i / heads, h = i % heads, from = std::clamp<int64_t>(first[r], 0, column);
      const float* kc = KC + r * s0 + (h / group) * s1;
      const float* vc = VC + r * s0 + (h / group) * s1;
      rotary(Q + i * d, C + r * d, S + r * d, query.data(), d);
      float top = -INFINITY;
      for (int64_t t = from; t <= column; ++t) {
        weights[t] = dot(query.data(), kc + t * s2, d) * float(scale);
        top = std::max(top, weights[t]);
      }
      float total = 0.f;
      for (int64_t t = from; t <= column; ++t) total += (weights[t] = std::exp(weights[t] - top));
      float* o = O + i * d;
      std::fill_n(o, d, 0.f);
      for (int64_t t = from; t <= column; ++t) {
        const float p = weights[t] / total;
        const float* vt = vc + t * s2;
        for (int64_t j = 0; j < d; ++j) o[j] += p * vt[j];
      }
    }
  });
  return out;
}
