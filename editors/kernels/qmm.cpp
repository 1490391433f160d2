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

#include <algorithm>
#include <cstdint>
#include <type_traits>
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


#if defined(__AMX_BF16__) && defined(__AVX512BW__) && defined(__AVX512VBMI__) && defined(__linux__)
#define QMM_AMX 1
#include <sys/syscall.h>
#include <unistd.h>

// AMX: the CPU's tile unit multiplies 16x32 bfloat16 by 32x16 bfloat16 into 16x16 float32 in a few
// nanoseconds, some fifty times the AVX-512 float32 rate. It stays exact here: a code (0..15) is a
// bfloat16 exactly, x is split into three bfloat16 parts whose sum is x exactly
// (8 + 8 + 8 mantissa bits), and every product of two bfloat16 is exact in the float32 accumulator.
// Per group of 32 inputs the tile sums codes times x; the scale, the minimum and the sum over groups
// are then applied in float32, as in `rows` above.
namespace amx {

// Linux hands out the tile registers' state only to a process that asks (ARCH_REQ_XCOMP_PERM, 0x1023,
// for XFEATURE_XTILEDATA, 18); a kernel or CPU without AMX says no and the AVX-512 path serves.
bool ready() {
  static const bool granted = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return granted;
}

// 64-byte aligned storage for the tiles' buffers.
template <class T>
struct Aligned {
  using value_type = T;
  Aligned() = default;
  template <class U>
  Aligned(const Aligned<U>&) {}
  T* allocate(size_t count) { return static_cast<T*>(::operator new(count * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  bool operator==(const Aligned&) const { return true; }
  bool operator!=(const Aligned&) const { return false; }
};

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles: 0 a group of the weights (16 input pairs x 16 outputs, two bfloat16 each); 2..4 x's three
// parts (w rows of x x 32 inputs); 1 their products (w rows x 16 outputs). w = min(16, rows), so that
// one row of x reads one row of a tile. Within a group the 32 inputs go in pairs (j, j + 16),
// j = 0..15: byte j of a Q4 group holds both.
inline void configure(int w) {
  TileConfig config;
  config.rows[0] = 16, config.colsb[0] = 64;
  for (int t : {1, 2, 3, 4}) config.rows[t] = uint8_t(w), config.colsb[t] = 64;
  _tile_loadconfig(&config);
}

// x (rows, k) as its three bfloat16 parts, as the tiles read them: part p, row tile t, group g start at
// ((p * tiles + t) * groups + g) * 32 w; within, row r's 32 inputs in pair order (j, j + 16).
std::vector<uint16_t, Aligned<uint16_t>> split(const float* x, int64_t rows, int64_t k, int w) {
  const int64_t groups = k / 32, tiles = (rows + w - 1) / w, part = tiles * groups * 32 * w;
  std::vector<uint16_t, Aligned<uint16_t>> out(3 * part, 0);
  const __m512i top = _mm512_set1_epi32(int32_t(0xFFFF0000u));
  const __m512i pairs = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                         37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      __m512i halves[2][3];
      for (int h = 0; h < 2; ++h) {
        // truncating (not rounding) leaves a remainder that the next part holds exactly
        const __m512 v = _mm512_loadu_ps(x + r * k + g * 32 + h * 16);
        const __m512 hi = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), top));
        const __m512 rest = _mm512_sub_ps(v, hi);
        const __m512 lo = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(rest), top));
        const __m512 parts[3] = {hi, lo, _mm512_sub_ps(rest, lo)};
        for (int p = 0; p < 3; ++p)
          halves[h][p] = _mm512_zextsi256_si512(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(parts[p]), 16)));
      }
      for (int p = 0; p < 3; ++p)
        _mm512_store_si512((__m512i*)&out[p * part + ((r / w) * groups + g) * 32 * w + (r % w) * 32],
                           _mm512_permutex2var_epi16(halves[0][p], pairs, halves[1][p]));
    }
  return out;
}

// Where each byte of the transposed groups comes from, in a pair of registers of four outputs each.
struct Transpose {
  alignas(64) int8_t index[4][64];
  Transpose() {
    for (int quarter = 0; quarter < 4; ++quarter)
      for (int p = 0; p < 64; ++p)
        index[quarter][p] = int8_t((p % 16 % 8) / 4 * 64 + 16 * (p % 16 % 4) + 4 * quarter + p / 16);
  }
};

// Output rows o..o+15's group g as a tile: row j holds, for each output, its codes j and j + 16 as
// bfloat16 (outputs past `valid` are zero).
inline void unpack(const uint8_t* q, int64_t row_bytes, int valid, uint16_t* b) {
  // bfloat16 of 0..15: the tile takes bfloat16, and a lookup is the cheapest exact conversion
  const __m512i table = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x4170, 0x4160, 0x4150,
                                         0x4140, 0x4130, 0x4120, 0x4110, 0x4100, 0x40e0, 0x40c0, 0x40a0, 0x4080,
                                         0x4040, 0x4000, 0x3f80, 0x0000);
  // the 16 outputs' groups, four to a register (byte 16 (n % 4) + j of rows[n / 4] is byte j of output n)
  __m512i rows[4];
  for (int z = 0; z < 4; ++z) {
    rows[z] = _mm512_setzero_si512();
    for (int i = 0; i < 4 && 4 * z + i < valid; ++i)
      rows[z] = _mm512_inserti32x4(rows[z], _mm_loadu_si128((const __m128i*)(q + (4 * z + i) * row_bytes)), i);
  }
  // transposed: byte 16 (j % 4) + n of byte_rows[j / 4] is byte j of output n
  static const Transpose from;
  const __m512i low = _mm512_set1_epi32(0x000F000F);
  for (int quarter = 0; quarter < 4; ++quarter) {
    const __m512i index = _mm512_load_si512((const __m512i*)from.index[quarter]);
    const __m512i t = _mm512_mask_blend_epi8(0xFF00FF00FF00FF00ull, _mm512_permutex2var_epi8(rows[0], index, rows[1]),
                                             _mm512_permutex2var_epi8(rows[2], index, rows[3]));
    for (int i = 0; i < 4; ++i) {
      const __m512i v = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(t, i));
      // code j in the low half of each pair, code j + 16 (the byte's high nibble) in the high half
      const __m512i both = _mm512_ternarylogic_epi32(v, _mm512_slli_epi32(v, 12), low, 0xA8);
      _mm512_store_si512((__m512i*)(b + (4 * quarter + i) * 32), _mm512_permutexvar_epi16(both, table));
    }
  }
}

// The scales (and minima) of outputs o..o+15 at group g, as one register's lanes (zero past `valid`).
inline __m512 across(const float* s, int64_t o, int64_t g, int64_t groups, __mmask16 valid) {
  const __m512i at = _mm512_add_epi32(
      _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(int32_t(groups))),
      _mm512_set1_epi32(int32_t(g)));
  return s == nullptr ? _mm512_setzero_ps() : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, at, s + o * groups, 4);
}

// Output rows [n0, n1) (whole tiles of 16 but the last) for every row of x. Each tile of 16 outputs
// goes in three passes, so that no pass waits on the one before it in the pipeline (a tile load of
// just-stored bytes, or a vector load of a just-stored tile, stalls): its codes as bfloat16, then the
// products group by group, then the scales, minima and the sum over groups.
void outputs(int64_t n0, int64_t n1, int64_t n, int64_t rows, int w, int64_t groups, const uint16_t* parts,
             const float* sums, const uint8_t* Q, const float* D, const float* M, float* Y) {
  configure(w);
  const int64_t tiles = (rows + w - 1) / w, part = tiles * groups * 32 * w, block = 16 * w;
  const int64_t row_bytes = groups * Q4::bytes;
  // kept from call to call: a fresh buffer this large is fresh pages from the kernel every time
  thread_local std::vector<uint16_t, Aligned<uint16_t>> b_buffer;
  thread_local std::vector<float, Aligned<float>> c_buffer, scale_buffer;
  b_buffer.resize(std::max<size_t>(b_buffer.size(), groups * 512));
  c_buffer.resize(std::max<size_t>(c_buffer.size(), tiles * groups * block));
  scale_buffer.resize(std::max<size_t>(scale_buffer.size(), groups * 32));
  uint16_t* b = b_buffer.data();
  float *c = c_buffer.data(), *scales = scale_buffer.data(), *minima = scales + groups * 16;
  for (int64_t o = n0; o < n1; o += 16) {
    const int valid = int(std::min<int64_t>(16, n1 - o));
    const __mmask16 columns = __mmask16((1u << valid) - 1);
    for (int64_t g = 0; g < groups; ++g) {
      unpack(Q + o * row_bytes + g * Q4::bytes, row_bytes, valid, b + g * 512);
      _mm512_store_ps(scales + g * 16, across(D, o, g, groups, columns));
      _mm512_store_ps(minima + g * 16, across(M, o, g, groups, columns));
    }
    for (int64_t g = 0; g < groups; ++g) {
      _tile_loadd(0, b + g * 512, 64);
      for (int64_t t = 0; t < tiles; ++t) {
        const uint16_t* a = parts + (t * groups + g) * 32 * w;
        _tile_zero(1);
        _tile_loadd(4, a + 2 * part, 64);  // smallest part first
        _tile_dpbf16ps(1, 4, 0);
        _tile_loadd(3, a + part, 64);
        _tile_dpbf16ps(1, 3, 0);
        _tile_loadd(2, a, 64);
        _tile_dpbf16ps(1, 2, 0);
        _tile_stored(1, c + (t * groups + g) * block, 64);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = r / w;
      __m512 sum = _mm512_setzero_ps();
      for (int64_t g = 0; g < groups; ++g) {
        const __m512 codes = _mm512_load_ps(c + (t * groups + g) * block + (r % w) * 16);
        sum = _mm512_fmadd_ps(codes, _mm512_load_ps(scales + g * 16), sum);
        if (M != nullptr) sum = _mm512_fmadd_ps(_mm512_set1_ps(sums[r * groups + g]), _mm512_load_ps(minima + g * 16), sum);
      }
      _mm512_mask_storeu_ps(Y + r * n + o, columns, sum);
    }
  }
  _tile_release();
}

}  // namespace amx
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
#ifdef QMM_AMX
  // A row or three read the weights faster than they can be unpacked to tiles: the vector path then.
  // int8 (the output embedding, one row a sequence) stays there too.
  if constexpr (std::is_same<Kind, Q4>::value) if (rows_x >= 4 && amx::ready()) {
    const int w = int(std::min<int64_t>(16, rows_x));
    const auto parts = amx::split(X, rows_x, k, w);
    at::parallel_for(0, (n + 15) / 16, 1, [&](int64_t t0, int64_t t1) {
      amx::outputs(t0 * 16, std::min(n, t1 * 16), n, rows_x, w, groups, parts.data(), S, Q, D, M, Y);
    });
    return y;
  }
#endif
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

bool tiles() {
#ifdef QMM_AMX
  return amx::ready();
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("tiles", &tiles, "whether int4 matmuls of 4 rows or more run on AMX tiles");
  module.def("q4_mm", &q4_mm, "x (m, k) float32 times 4-bit codes (n, k/2) with scales and minima (n, k/32)");
  module.def("q8_mm", &q8_mm, "x (m, k) float32 times 8-bit codes (n, k) with scales (n, k/32)");
}
