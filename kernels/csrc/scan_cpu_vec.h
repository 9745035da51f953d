// 8-lane float32 vector helpers for the channel-lane path (scan_cpu_lanes.h): loads and stores,
// clamps, an in-register table lookup, 8x8 transposes between row-major and lane-major buffers, eight
// horizontal sums at once, and exp / log / softplus / sigmoid with explicit vectors (the compiler's own
// vectorisation of the scalar versions in scan_cpu.cpp is poor). GCC vector extensions, so the same
// source builds for AVX2, AVX-512 or NEON; AVX intrinsics only where they save instructions.
// Included by scan_cpu_lanes.h inside scan_cpu.cpp's anonymous namespace.

using v8f = float __attribute__((vector_size(32)));
using v8i = int32_t __attribute__((vector_size(32)));

inline v8f vload(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void vstore(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }
inline v8f vset(float x) { return v8f{} + x; }
// Clamps as single instructions where the target has them (the portable a < b ? b : a form compiles to
// compare + blend because of its NaN semantics; here NaN handling does not matter).
#if defined(__AVX__)
inline v8f vmax(v8f a, v8f b) { return _mm256_max_ps(a, b); }
inline v8f vmin(v8f a, v8f b) { return _mm256_min_ps(a, b); }
#else
inline v8f vmax(v8f a, v8f b) { return a < b ? b : a; }
inline v8f vmin(v8f a, v8f b) { return a > b ? b : a; }
#endif
// r[j] = table[idx[j] mod 8]: one vpermps on AVX2.
#if defined(__AVX2__)
inline v8i vlookup8(v8i table, v8i idx) {
  return __builtin_bit_cast(v8i, _mm256_permutevar8x32_ps(__builtin_bit_cast(__m256, table),
                                                          __builtin_bit_cast(__m256i, idx)));
}
#else
inline v8i vlookup8(v8i table, v8i idx) {
  v8i r;
  for (int j = 0; j < 8; ++j) r[j] = table[idx[j] & 7];
  return r;
}
#endif
// 8x8 transpose of the rows r[0..7]: returns columns in r.
inline void transpose8(v8f* r) {
  v8f t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[k + 4] = __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// Row-major (8 rows of length L, `stride` apart) to lane-major (one vector per step) and back.
// Per-step access to 8 rows directly would touch 8 cache lines 4 KiB apart when L = 1024, which all
// fall in one L1 set; the transposed copies keep every step's data in one line.
inline void rows_to_lanes(const float* src, int64_t stride, int64_t L, v8f* dst) {
  int64_t t = 0;
  for (; t + 8 <= L; t += 8) {
    v8f r[8];
    for (int j = 0; j < 8; ++j) r[j] = vload(src + j * stride + t);
    transpose8(r);
    for (int k = 0; k < 8; ++k) dst[t + k] = r[k];
  }
  for (; t < L; ++t)
    for (int j = 0; j < 8; ++j) dst[t][j] = src[j * stride + t];
}

inline void lanes_to_rows(const v8f* src, int64_t L, float* dst, int64_t stride) {
  int64_t t = 0;
  for (; t + 8 <= L; t += 8) {
    v8f r[8];
    for (int k = 0; k < 8; ++k) r[k] = src[t + k];
    transpose8(r);
    for (int j = 0; j < 8; ++j) vstore(dst + j * stride + t, r[j]);
  }
  for (; t < L; ++t)
    for (int j = 0; j < 8; ++j) dst[j * stride + t] = src[t][j];
}

inline v8f gather8(const float* p, int64_t stride) {
  return v8f{p[0], p[stride], p[2 * stride], p[3 * stride], p[4 * stride], p[5 * stride], p[6 * stride],
             p[7 * stride]};
}
inline void scatter8(float* p, int64_t stride, v8f v) {
  for (int j = 0; j < 8; ++j) p[j * stride] = v[j];
}

// 2^(x/8), lane-wise, for the scans' exp(Δ·A) = 2^(Δ·A·8·log2 e / 8). With k = round(x):
// 2^(x/8) = 2^⌊k/8⌋ · 2^((k mod 8)/8) · 2^(f/8), f = x − k in [−½, ½]. Adding 1.5·2^23 + 1016 rounds x
// and leaves k + 1016 = 8·(127 + ⌊k/8⌋) + (k mod 8) in the low mantissa bits, so shifting those bits
// left by 20 puts 127 + ⌊k/8⌋ in the exponent field and k mod 8 just below it; the eight values
// 2^(j/8) come from one in-register table lookup (vpermps reads the low 3 bits of each index), stored
// as their mantissa bits minus j << 20 so that one integer add yields 2^⌊k/8⌋ · 2^(j/8). 2^(f/8) is a
// cubic fitted for minimal relative error on [−1/16, 1/16] (2e-8; below 1e-7 with float32 rounding
// and the table). Against a degree-5 polynomial over [−½, ½] this trades three FMAs for a permute
// and an integer add (forward ~10 % faster on the development machine). x is clamped to
// [−1008, 1016]: results stay normal, tiny ones are ~1e-38, not 0. Clamp = false skips the clamps
// (2 of 13 instructions) for callers that checked the range (exp_range_ok in scan_cpu_lanes.h).
template <bool Clamp = true> inline v8f vexp2_eighths(v8f x) {
  constexpr float kMagic = 12582912.0f + 1016.0f;
  // bits of 2^(j/8) without the exponent, minus j << 20 (the index bits that the shift carries along)
  constexpr v8i kTable = {0, 0x0b95c2 - (1 << 20), 0x1837f0 - (2 << 20), 0x25fed7 - (3 << 20),
                          0x3504f3 - (4 << 20), 0x45672a - (5 << 20), 0x5744fd - (6 << 20),
                          0x6ac0c7 - (7 << 20)};
  if (Clamp) x = vmin(vmax(x, vset(-1008.0f)), vset(1016.0f));
  const v8f shifted = x + kMagic;
  const v8f f = x - (shifted - kMagic);
  const v8i bits = __builtin_bit_cast(v8i, shifted);
  const v8f scale = __builtin_bit_cast(v8f, vlookup8(kTable, bits) + (bits << 20));
  v8f p = vset(1.0839629249e-04f);
  p = p * f + 3.7541261408e-03f;
  p = p * f + 8.6643397808e-02f;
  p = p * f + 1.0f;
  return p * scale;
}

// Eight horizontal sums at once: r[j] = Σ_lanes v[j] (21 shuffles and adds instead of ~48).
inline v8f hsum8(const v8f* v) {
  auto pair = [](v8f a, v8f b) {  // [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7]
    return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
  };
  const v8f q0 = pair(pair(v[0], v[1]), pair(v[2], v[3]));
  const v8f q1 = pair(pair(v[4], v[5]), pair(v[6], v[7]));
  return __builtin_shufflevector(q0, q1, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(q0, q1, 4, 5, 6, 7, 12, 13, 14, 15);
}

constexpr float kLog2e = 1.4426950408889634f;

inline v8f vexp(v8f x) { return vexp2_eighths(x * (8.0f * kLog2e)); }

// log(x) for x >= 1: x = m·2^e with m in [√½, √2), log m = 2 atanh(s), s = (m−1)/(m+1), to s^9.
inline v8f vlog_ge1(v8f x) {
  const v8i bits = __builtin_bit_cast(v8i, x);
  v8i e = ((bits >> 23) & 255) - 127;
  v8f m = __builtin_bit_cast(v8f, (bits & 0x7fffff) | 0x3f800000);
  const v8i big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const v8f s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
  v8f p = vset(1.0f / 9.0f);
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 0.2f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p + __builtin_convertvector(e, v8f) * 0.6931471805599453f;
}

// softplus with the identity branch above 20, as the scalar softplus() of scan_cpu.cpp, and its
// derivative sigmoid(x) (1 above 20), from one exp.
inline v8f vsoftplus(v8f x, v8f* grad = nullptr) {
  const v8f e = vexp(vmin(x, vset(20.0f)));
  const v8f small = e * (1.0f - e * (0.5f - e * (1.0f / 3.0f)));  // log1p for e < 1e-3
  const v8f lg = e < 1e-3f ? small : vlog_ge1(1.0f + e);
  if (grad) *grad = x > 20.0f ? vset(1.0f) : e / (1.0f + e);
  return x > 20.0f ? x : lg;
}

inline v8f vsigmoid(v8f x) { return 1.0f / (1.0f + vexp(-x)); }

inline v8f mask8(const uint8_t* m) {
  return v8f{float(m[0] != 0), float(m[1] != 0), float(m[2] != 0), float(m[3] != 0),
             float(m[4] != 0), float(m[5] != 0), float(m[6] != 0), float(m[7] != 0)};
}
