// Weight-only matmuls in float32, y = x W^T, W as codes in groups of 32 inputs: int4 (GGUF Q4_1's
// w = d q + m, q in 0..15; the m term is the minimum times x's sum over the group) and int8 (Q8_0's
// w = d q, q in -127..127), a scale d (and minimum m) per group.
//
// Layout, tiles of 16 outputs (editors/quant.py packs it): for tile t and group g, the codes at
// (t groups + g) bytes, bytes = 256 for int4 (byte 16 j + n holding output n's code j in its low nibble
// and code j + 16 in its high one) or 512 for int8 (byte 32 j + n output n's code j, byte 32 j + 16 + n
// its code j + 16); 16 scales (and minima) at (t groups + g) 16 + n. Outputs run in vector lanes, so a
// group's scales are one load and no row needs a horizontal sum.
//
// The arithmetic is float32 throughout: the result is the float32 matmul of the dequantised weight up
// to the order of summation, and greedy answers stay those of the float32 path.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

struct Weights {
  const uint8_t* codes;
  const float *scales, *minima;  // minima: int4's only
  int64_t groups, bytes;         // bytes of codes a tile and group: 256 (int4) or 512 (int8)
  const uint8_t* code(int64_t t, int64_t g) const { return codes + (t * groups + g) * bytes; }
  const float* scale(int64_t t, int64_t g) const { return scales + (t * groups + g) * 16; }
  const float* minimum(int64_t t, int64_t g) const { return minima + (t * groups + g) * 16; }
};

// Rows of x, their sums over each group (int4's minimum term), and y (its first `valid` columns of each
// tile are real).
struct Rows {
  const float* x;
  const float* sums;
  float* y;
  int64_t k, n;
};

#if defined(__AVX512F__)
// Asks for the codes PREFETCH bytes ahead of these while these are computed: the hardware's own
// prefetcher stops at every 4 KiB page, and a decoding step of one row waits on memory (docs/results.md).
// A prefetch never faults, so asking past the last codes is harmless.
constexpr int64_t PREFETCH = 1024;
inline void ahead(const uint8_t* codes, int64_t bytes) {
  for (int64_t line = 0; line < bytes; line += 64) _mm_prefetch((const char*)codes + PREFETCH + line, _MM_HINT_T0);
}

// Codes j and j + 16 of a group's 16 outputs, as float32 lanes.
template <bool Int8>
inline void codes_at(const uint8_t* c, int j, __m512& first, __m512& second) {
  if constexpr (Int8) {
    first = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i*)(c + 32 * j))));
    second = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i*)(c + 32 * j + 16))));
  } else {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i*)(c + 16 * j)));
    first = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
    second = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
  }
}

// RB rows of x against tile t: for each group, codes times x with four accumulators a row (a single
// chain of 32 FMAs would wait on itself), then the scale and (int4) the minimum term.
template <bool Int8, int RB>
void tile(const Weights& w, const Rows& r, int64_t row, int64_t t) {
  __m512 acc[RB];
  for (int i = 0; i < RB; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512 part[RB][4];
    for (int i = 0; i < RB; ++i)
      for (int p = 0; p < 4; ++p) part[i][p] = _mm512_setzero_ps();
    const uint8_t* c = w.code(t, g);
    ahead(c, w.bytes);
    for (int j = 0; j < 16; ++j) {
      __m512 first, second;
      codes_at<Int8>(c, j, first, second);
      for (int i = 0; i < RB; ++i) {
        const float* x = r.x + (row + i) * r.k + g * 32;
        part[i][j & 1] = _mm512_fmadd_ps(first, _mm512_set1_ps(x[j]), part[i][j & 1]);
        part[i][2 + (j & 1)] = _mm512_fmadd_ps(second, _mm512_set1_ps(x[j + 16]), part[i][2 + (j & 1)]);
      }
    }
    const __m512 d = _mm512_load_ps(w.scale(t, g));
    for (int i = 0; i < RB; ++i) {
      const __m512 codes = _mm512_add_ps(_mm512_add_ps(part[i][0], part[i][1]), _mm512_add_ps(part[i][2], part[i][3]));
      acc[i] = _mm512_fmadd_ps(codes, d, acc[i]);
      if constexpr (!Int8)
        acc[i] = _mm512_fmadd_ps(_mm512_load_ps(w.minimum(t, g)), _mm512_set1_ps(r.sums[(row + i) * w.groups + g]), acc[i]);
    }
  }
  const int valid = int(std::min<int64_t>(16, r.n - t * 16));
  for (int i = 0; i < RB; ++i) _mm512_mask_storeu_ps(r.y + (row + i) * r.n + t * 16, __mmask16((1u << valid) - 1), acc[i]);
}
#else
// Portable: the same sums in plain loops, which the compiler vectorises where it can.
template <bool Int8, int RB>
void tile(const Weights& w, const Rows& r, int64_t row, int64_t t) {
  float acc[RB][16] = {};
  for (int64_t g = 0; g < w.groups; ++g) {
    float part[RB][16] = {};
    const uint8_t* c = w.code(t, g);
    for (int j = 0; j < 16; ++j)
      for (int i = 0; i < RB; ++i) {
        const float* x = r.x + (row + i) * r.k + g * 32;
        for (int o = 0; o < 16; ++o) {
          const float first = Int8 ? float(int8_t(c[32 * j + o])) : float(c[16 * j + o] & 15);
          const float second = Int8 ? float(int8_t(c[32 * j + 16 + o])) : float(c[16 * j + o] >> 4);
          part[i][o] += first * x[j] + second * x[j + 16];
        }
      }
    for (int i = 0; i < RB; ++i)
      for (int o = 0; o < 16; ++o)
        acc[i][o] += part[i][o] * w.scale(t, g)[o] + (Int8 ? 0.f : w.minimum(t, g)[o] * r.sums[(row + i) * w.groups + g]);
  }
  const int valid = int(std::min<int64_t>(16, r.n - t * 16));
  for (int i = 0; i < RB; ++i)
    for (int o = 0; o < valid; ++o) r.y[(row + i) * r.n + t * 16 + o] = acc[i][o];
}
#endif

template <bool Int8>
void vectors(const Weights& w, const Rows& r, int64_t rows, int64_t tiles) {
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int64_t row = 0;
      for (; row + 4 <= rows; row += 4) tile<Int8, 4>(w, r, row, t);
      if (rows - row == 3) tile<Int8, 3>(w, r, row, t);
      if (rows - row == 2) tile<Int8, 2>(w, r, row, t);
      if (rows - row == 1) tile<Int8, 1>(w, r, row, t);
    }
  });
}

#if defined(__AMX_BF16__) && defined(__AVX512BW__) && defined(__linux__)
#define WITH_AMX 1

// AMX: the CPU's tile unit multiplies 16x32 bfloat16 by 32x16 bfloat16 into 16x16 float32 in a few
// nanoseconds, many times the AVX-512 float32 rate. It stays exact: a code (0..15) is a bfloat16
// exactly, x is split into three bfloat16 parts whose sum is x exactly (8 + 8 + 8 mantissa bits), and
// every product of two bfloat16 is exact in the float32 accumulator. Per group the tile sums codes
// times x; the scale, the minimum and the sum over groups are then applied in float32, as in `tile`.
namespace amx {

// Linux hands out the tile registers' state only to a process that asks (ARCH_REQ_XCOMP_PERM, 0x1023,
// for XFEATURE_XTILEDATA, 18); a kernel or CPU without AMX says no and the vector path serves.
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

// Tiles: 0 a group of the weights (16 input pairs (j, j + 16) x 16 outputs, two bfloat16 each: the
// pair byte j of the layout holds); 2..4 x's three parts (w rows of x x 32 inputs, in that pair
// order); 1 their products (w rows x 16 outputs). w <= 16: one row of x, one row of a tile.
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

// A group of 16 outputs as the weights' tile: row j holds, for each output, its codes j and j + 16.
inline void unpack(const uint8_t* codes, uint16_t* b) {
  // bfloat16 of 0..15: the tile takes bfloat16, and a lookup is the cheapest exact conversion
  const __m512i table = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x4170, 0x4160, 0x4150,
                                         0x4140, 0x4130, 0x4120, 0x4110, 0x4100, 0x40e0, 0x40c0, 0x40a0, 0x4080,
                                         0x4040, 0x4000, 0x3f80, 0x0000);
  const __m512i low = _mm512_set1_epi32(0x000F000F);
  for (int j = 0; j < 16; ++j) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i*)(codes + 16 * j)));
    // code j in the low half of each pair, code j + 16 (the byte's high nibble) in the high half
    const __m512i both = _mm512_ternarylogic_epi32(v, _mm512_slli_epi32(v, 12), low, 0xA8);
    _mm512_store_si512((__m512i*)(b + j * 32), _mm512_permutexvar_epi16(both, table));
  }
}

// The same tile from int8 codes: a code (-127..127) is a bfloat16 exactly, its float32's top half.
inline void unpack8(const uint8_t* codes, uint16_t* b) {
  const __m512i top = _mm512_set1_epi32(int32_t(0xFFFF0000u));
  for (int j = 0; j < 16; ++j) {
    const __m512i first = _mm512_castps_si512(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i*)(codes + 32 * j)))));
    const __m512i second = _mm512_castps_si512(
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i*)(codes + 32 * j + 16)))));
    _mm512_store_si512((__m512i*)(b + j * 32), _mm512_or_si512(_mm512_srli_epi32(first, 16), _mm512_and_si512(second, top)));
  }
}

// Tiles [t0, t1) of outputs for every row of x, each in three passes, so that no pass waits on the one
// before it in the pipeline (a tile load of just-stored bytes, or a vector load of a just-stored tile,
// stalls): its codes as bfloat16, the products group by group, then scales, minima and the sum.
template <bool Int8>
void outputs(const Weights& wt, const Rows& r, int64_t rows, int w, const uint16_t* parts, int64_t t0, int64_t t1) {
  configure(w);
  const int64_t groups = wt.groups, tiles = (rows + w - 1) / w, part = tiles * groups * 32 * w, block = 16 * w;
  // kept from call to call: a fresh buffer this large is fresh pages from the kernel every time
  thread_local std::vector<uint16_t, Aligned<uint16_t>> b_buffer;
  thread_local std::vector<float, Aligned<float>> c_buffer;
  b_buffer.resize(std::max<size_t>(b_buffer.size(), groups * 512));
  c_buffer.resize(std::max<size_t>(c_buffer.size(), tiles * groups * block));
  uint16_t* b = b_buffer.data();
  float* c = c_buffer.data();
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t g = 0; g < groups; ++g) {
      ahead(wt.code(t, g), wt.bytes);
      Int8 ? unpack8(wt.code(t, g), b + g * 512) : unpack(wt.code(t, g), b + g * 512);
    }
    for (int64_t g = 0; g < groups; ++g) {
      _tile_loadd(0, b + g * 512, 64);
      for (int64_t s = 0; s < tiles; ++s) {
        const uint16_t* a = parts + (s * groups + g) * 32 * w;
        _tile_zero(1);
        _tile_loadd(4, a + 2 * part, 64);  // smallest part first
        _tile_dpbf16ps(1, 4, 0);
        _tile_loadd(3, a + part, 64);
        _tile_dpbf16ps(1, 3, 0);
        _tile_loadd(2, a, 64);
        _tile_dpbf16ps(1, 2, 0);
        _tile_stored(1, c + (s * groups + g) * block, 64);
      }
    }
    const __mmask16 columns = __mmask16((1u << std::min<int64_t>(16, r.n - t * 16)) - 1);
    // Four rows at a time, each with its own sums: one row's chain of FMAs would wait on itself.
    for (int64_t row = 0; row < rows; row += 4) {
      const int64_t count = std::min<int64_t>(4, rows - row);
      __m512 sum[4], low[4];
      for (int i = 0; i < 4; ++i) sum[i] = low[i] = _mm512_setzero_ps();
      for (int64_t g = 0; g < groups; ++g) {
        const __m512 d = _mm512_load_ps(wt.scale(t, g));
        for (int64_t i = 0; i < count; ++i) {
          const int64_t at = row + i;
          sum[i] = _mm512_fmadd_ps(_mm512_load_ps(c + ((at / w) * groups + g) * block + (at % w) * 16), d, sum[i]);
          if constexpr (!Int8)
            low[i] = _mm512_fmadd_ps(_mm512_set1_ps(r.sums[at * groups + g]), _mm512_load_ps(wt.minimum(t, g)), low[i]);
        }
      }
      for (int64_t i = 0; i < count; ++i)
        _mm512_mask_storeu_ps(r.y + (row + i) * r.n + t * 16, columns, Int8 ? sum[i] : _mm512_add_ps(sum[i], low[i]));
    }
  }
  _tile_release();
}

template <bool Int8>
void matmul(const Weights& w, const Rows& r, int64_t rows, int64_t tiles) {
  // Rows spread evenly over the fewest tiles: a tile's products cost by its rows, so 18 rows as two
  // of 9 rather than 16 and 2 padded to 16: a join's prompts are often that many (docs/results.md).
  const int64_t row_tiles = (rows + 15) / 16;
  const int width = int((rows + row_tiles - 1) / row_tiles);
  const auto parts = split(r.x, rows, r.k, width);
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) { outputs<Int8>(w, r, rows, width, parts.data(), t0, t1); });
}

}  // namespace amx
#endif

// Either kind: the AMX tiles for 2 rows or more where the CPU has them, the vector path otherwise.
template <bool Int8>
void run(const Weights& w, const Rows& r, int64_t rows, int64_t tiles) {
#ifdef WITH_AMX
  // One row reads the weights faster than the tiles can take them: the vector path then.
  if (rows >= 2 && amx::ready()) {
    amx::matmul<Int8>(w, r, rows, tiles);
    return;
  }
#endif
  vectors<Int8>(w, r, rows, tiles);
}

torch::Tensor checked_x(const torch::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.size(1) % 32 == 0,
              "x must be float32 (rows, in_features), in_features a multiple of 32");
  return x.contiguous();
}

void check_scales(const torch::Tensor& s, int64_t tiles, int64_t groups, const char* name) {
  TORCH_CHECK(s.dim() == 3 && s.size(0) == tiles && s.size(1) == groups && s.size(2) == 16 &&
                  s.scalar_type() == torch::kFloat32 && s.is_contiguous(),
              name, " must be float32 (tiles, in_features / 32, 16)");
}

void check_codes(const torch::Tensor& codes, int64_t tiles, int64_t groups, int64_t bytes, torch::ScalarType type,
                 const char* kind) {
  TORCH_CHECK(codes.dim() == 4 && codes.size(0) == tiles && codes.size(1) == groups && codes.size(2) == 16 &&
                  codes.size(3) == bytes && codes.scalar_type() == type && codes.is_contiguous(),
              "codes must be ", kind, " (tiles of 16 outputs, in_features / 32, 16, ", bytes, ")");
}

}  // namespace

torch::Tensor q4_mm(torch::Tensor x, torch::Tensor codes, torch::Tensor scales, torch::Tensor minima, int64_t n) {
  x = checked_x(x);
  const int64_t rows = x.size(0), k = x.size(1), groups = k / 32, tiles = (n + 15) / 16;
  check_codes(codes, tiles, groups, 16, torch::kUInt8, "uint8");
  check_scales(scales, tiles, groups, "scales");
  check_scales(minima, tiles, groups, "minima");
  auto y = torch::empty({rows, n}, x.options());
  const float* X = x.data_ptr<float>();
  std::vector<float> sums(rows * groups, 0.f);  // x's sum over each group
  for (size_t i = 0; i < sums.size(); ++i)
    for (int j = 0; j < 32; ++j) sums[i] += X[i * 32 + j];
  const Weights w{codes.data_ptr<uint8_t>(), scales.data_ptr<float>(), minima.data_ptr<float>(), groups, 256};
  run<false>(w, Rows{X, sums.data(), y.data_ptr<float>(), k, n}, rows, tiles);
  return y;
}

torch::Tensor q8_mm(torch::Tensor x, torch::Tensor codes, torch::Tensor scales, int64_t n) {
  x = checked_x(x);
  const int64_t rows = x.size(0), k = x.size(1), groups = k / 32, tiles = (n + 15) / 16;
  check_codes(codes, tiles, groups, 32, torch::kInt8, "int8");
  check_scales(scales, tiles, groups, "scales");
  auto y = torch::empty({rows, n}, x.options());
  const Weights w{reinterpret_cast<const uint8_t*>(codes.data_ptr<int8_t>()), scales.data_ptr<float>(), nullptr, groups, 512};
  run<true>(w, Rows{x.data_ptr<float>(), nullptr, y.data_ptr<float>(), k, n}, rows, tiles);
  return y;
}

bool tiles() {
#ifdef WITH_AMX
  return amx::ready();
#else
  return false;
#endif
}
