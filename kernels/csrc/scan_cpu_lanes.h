// Channel-lane float32 path: 8 consecutive channels of one batch entry run side by side in the 8
// lanes of a vector (GCC vector extensions, so the same source builds for AVX2, AVX-512 or NEON).
// The 8 channels share B_t and C_t (same group), so every B/C value is one broadcast, the output sum
// over the state needs no horizontal reduction, and the per-step bookkeeping is paid once per 8
// channels. Only dB and dC, which sum over channels, need a reduction across lanes; it runs once per
// step, eight sums at a time (hsum8). Same maths as the generic rows in scan_cpu.cpp, which serve float64,
// time-invariant B/C and channel counts that are not multiples of 8; tests cover both paths.
// Included by scan_cpu.cpp inside its anonymous namespace.

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
// and an integer add (forward ~10 % faster on the development machine). x is clamped to [−1008, 1016]: results stay
// normal, tiny ones are ~1e-38, not 0. Clamp = false skips the clamps (2 of 13 instructions) for
// callers that checked the range (exp_range_ok).
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

// row_delta, row_gate and finish_row of scan_cpu.cpp with explicit vectors (the compiler's own
// vectorisation of the scalar exp/log code is poor), falling back to them for the tail and
// for nothing else; results agree to rounding.
void row_delta_v8(const Args<float>& a, int64_t b, int64_t d, float* dt, float* dtu, float* dgrad) {
  const int64_t L = a.len, L8 = L / 8 * 8;
  const float* del = a.delta + (b * a.dim + d) * L;
  const float* u = a.u + (b * a.dim + d) * L;
  const uint8_t* m = a.mask ? a.mask + b * L : nullptr;
  const float bias = a.dbias ? a.dbias[d] : 0.0f;
  for (int64_t t = 0; t < L8; t += 8) {
    const v8f x = vload(del + t) + bias;
    const v8f keep = m ? mask8(m + t) : vset(1.0f);
    v8f grad = vset(1.0f);
    const v8f v = (a.softplus ? vsoftplus(x, dgrad ? &grad : nullptr) : x) * keep;
    vstore(dt + t, v);
    vstore(dtu + t, v * vload(u + t));
    if (dgrad) vstore(dgrad + t, keep * grad);
  }
  for (int64_t t = L8; t < L; ++t) {
    const float x = del[t] + bias, keep = m ? float(m[t] != 0) : 1.0f;
    dt[t] = (a.softplus ? softplus(x) : x) * keep;
    dtu[t] = dt[t] * u[t];
    if (dgrad) dgrad[t] = keep * (a.softplus ? (x > 20.0f ? 1.0f : sigmoid(x)) : 1.0f);
  }
}

float row_gate_v8(const Args<float>& a, int64_t r, float* gy, float* sz) {
  const int64_t L = a.len, L8 = L / 8 * 8;
  const float* g = a.dout + r * L;
  const float* u = a.u + r * L;
  const float* z = a.z ? a.z + r * L : nullptr;
  v8f dD{};
  for (int64_t t = 0; t < L8; t += 8) {
    v8f gv = vload(g + t);
    if (z) {
      const v8f zv = vload(z + t), s = vsigmoid(zv);
      vstore(sz + t, s);
      gv = gv * zv * s;
    }
    vstore(gy + t, gv);
    dD += gv * vload(u + t);
  }
  float total = 0.0f;
  for (int j = 0; j < 8; ++j) total += dD[j];
  for (int64_t t = L8; t < L; ++t) {
    if (z) sz[t] = sigmoid(z[t]);
    gy[t] = z ? g[t] * z[t] * sz[t] : g[t];
    total += gy[t] * u[t];
  }
  return total;
}

void finish_row_v8(const Args<float>& a, int64_t r) {
  const int64_t L = a.len, L8 = L / 8 * 8;
  float* y = a.out + r * L;
  const float* u = a.u + r * L;
  const float* z = a.z ? a.z + r * L : nullptr;
  const float Dd = a.Dskip ? a.Dskip[r % a.dim] : 0.0f;
  float* yp = z ? a.ypre + r * L : nullptr;
  for (int64_t t = 0; t < L8; t += 8) {
    v8f v = vload(y + t) + Dd * vload(u + t);
    if (z) {
      vstore(yp + t, v);
      v = v * vload(z + t) * vsigmoid(vload(z + t));
    }
    vstore(y + t, v);
  }
  for (int64_t t = L8; t < L; ++t) {
    y[t] += Dd * u[t];
    if (z) {
      yp[t] = y[t];
      y[t] *= z[t] * sigmoid(z[t]);
    }
  }
}

// The lane path needs B and C time-varying with the 8 channels of a lane group in one group.
inline bool lanes_ok(const Args<float>& a) {
  return a.b_st != 0 && a.c_st != 0 && a.b_dpg % 8 == 0 && a.c_dpg % 8 == 0;
}

// Per-thread scratch. `rows` holds 5 row buffers of 8 rows each (padded stride Ls) for the per-row
// pre-passes; the lane-major buffers hold one vector (8 channels) per step; state-sized buffers one
// vector per state index; chunk buffers one vector per (step in chunk, state index).
struct LaneScratch {
  int64_t Ls;
  std::vector<float> rows;
  std::vector<v8f> dt, dtu, dsp, gy, sz, u, z, g, y, du, ddelta, dz;
  std::vector<v8f> A, A2, h, carry, dA, hs, as, dCp, dBp;
  std::vector<float> dD;
  explicit LaneScratch(const Args<float>& a)
      : Ls(a.len + 16), rows(5 * 8 * Ls), dt(a.len), dtu(a.len), dsp(a.len), gy(a.len), sz(a.len), u(a.len),
        z(a.len), g(a.len), y(a.len), du(a.len), ddelta(a.len), dz(a.len), A(a.dstate), A2(a.dstate), h(a.dstate),
        carry(a.dstate), dA(a.dstate), hs(a.chunk * a.dstate), as(a.chunk * a.dstate),
        dCp(a.dstate + 8), dBp(a.dstate + 8), dD(8) {}
  float* row(int k) { return rows.data() + k * 8 * Ls; }
};

// True when every Δ_t·A_n·8·log2 e of the lane group (w.dt, w.A2 loaded) lies in [−1000, 1000], where
// vexp2_eighths needs no clamps: |Δ·A| <= 86, so ā >= 2e-38. Mamba's Δ and A nearly always are;
// a group that is not (or holds a NaN or an infinity) takes the clamped path.
inline bool exp_range_ok(const LaneScratch& w, int64_t L, int64_t N) {
  const v8i abs_bits = v8i{} + 0x7fffffff;
  auto vabs = [&](v8f v) { return __builtin_bit_cast(v8f, __builtin_bit_cast(v8i, v) & abs_bits); };
  v8f smax{}, amax{}, finite{};  // finite stays 0 unless some value is NaN or infinite (x·0 = NaN)
  for (int64_t t = 0; t < L; ++t) {
    smax = vmax(smax, vabs(w.dt[t]));
    finite += w.dt[t] * 0.0f;
  }
  for (int64_t n = 0; n < N; ++n) {
    amax = vmax(amax, vabs(w.A2[n]));
    finite += w.A2[n] * 0.0f;
  }
  const v8f bound = smax * amax;
  for (int j = 0; j < 8; ++j)
    if (!(bound[j] <= 1000.0f) || finite[j] != 0.0f) return false;
  return true;
}

inline void load_lane_weights(const Args<float>& a, int64_t d0, LaneScratch& w) {
  for (int64_t n = 0; n < a.dstate; ++n) {
    w.A[n] = gather8(a.A + d0 * a.dstate + n, a.dstate);
    w.A2[n] = w.A[n] * (8.0f * kLog2e);  // exp(Δ·A) = 2^(Δ·A·8·log2 e / 8)
  }
}

// ā = exp(Δ_t·A_n) for steps [t0, t1) into w.as (one vector per (step in chunk, n)).
template <int NS, bool Clamp> void exp_chunk(LaneScratch& w, int64_t t0, int64_t t1, int64_t N) {
  for (int64_t t = t0; t < t1; ++t) {
    const v8f s = w.dt[t];
#pragma GCC unroll 16
    for (int64_t n = 0; n < (NS > 0 ? NS : N); ++n)
      w.as[(t - t0) * N + n] = vexp2_eighths<Clamp>(s * w.A2[n]);
  }
}

// NS > 0: the state size as a compile-time constant, so the loops over n unroll completely.
template <int NS> void forward_lanes(const Args<float>& a, int64_t grp, LaneScratch& w) {
  const int64_t N = NS > 0 ? NS : a.dstate, L = a.len, nck = (L + a.chunk - 1) / a.chunk;
  const int64_t r0 = 8 * grp, b = r0 / a.dim, d0 = r0 % a.dim;
  for (int j = 0; j < 8; ++j)
    row_delta_v8(a, b, d0 + j, w.row(0) + j * w.Ls, w.row(1) + j * w.Ls, nullptr);
  rows_to_lanes(w.row(0), w.Ls, L, w.dt.data());
  rows_to_lanes(w.row(1), w.Ls, L, w.dtu.data());
  load_lane_weights(a, d0, w);
  const float* Bp = a.Bm + b * a.b_sb + (d0 / a.b_dpg) * a.b_sg;
  const float* Cp = a.Cm + b * a.c_sb + (d0 / a.c_dpg) * a.c_sg;
  for (int64_t n = 0; n < N; ++n) w.h[n] = a.h0 ? gather8(a.h0 + r0 * N + n, N) : v8f{};
  v8f* y = w.du.data();  // reused: y before D·u and the gate, lane-major
  const bool fast = exp_range_ok(w, L, N);
  for (int64_t c = 0; c < nck; ++c) {
    for (int64_t n = 0; n < N; ++n) scatter8(a.ckpt + (r0 * nck + c) * N + n, nck * N, w.h[n]);
    const int64_t t0 = c * a.chunk, t1 = std::min(L, t0 + a.chunk);
    // Two passes: the exps first (independent of h), then the recurrence, which carries only the
    // short h and acc dependency chains.
    if (fast)
      exp_chunk<NS, false>(w, t0, t1, N);
    else
      exp_chunk<NS, true>(w, t0, t1, N);
    for (int64_t t = t0; t < t1; ++t) {
      const float* Bt = Bp + t * a.b_st;
      const float* Ct = Cp + t * a.c_st;
      const v8f su = w.dtu[t];
      const v8f* ab = &w.as[(t - t0) * N];
      v8f acc[4] = {};  // four partial sums: a chain of N dependent adds would set the pace
#pragma GCC unroll 16
      for (int64_t n = 0; n < N; ++n) {
        const v8f hn = ab[n] * w.h[n] + su * Bt[n];
        w.h[n] = hn;
        acc[n % 4] += Ct[n] * hn;
      }
      y[t] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
  }
  for (int64_t n = 0; n < N; ++n) scatter8(a.last + r0 * N + n, N, w.h[n]);
  lanes_to_rows(y, L, a.out + r0 * L, L);
  for (int j = 0; j < 8; ++j) finish_row_v8(a, r0 + j);
}

// Sum the per-lane partials of one chunk into the thread's dB or dC buffer (rows t0.., all n).
inline void reduce_lanes(v8f* parts, int64_t count, float* dst) {
  for (int64_t k = count; k < (count + 7) / 8 * 8; ++k) parts[k] = v8f{};
  for (int64_t k = 0; k < count; k += 8) {
    const v8f r = hsum8(parts + k);
    if (count - k >= 8) {
      vstore(dst + k, vload(dst + k) + r);
    } else {
      for (int64_t j = 0; j < count - k; ++j) dst[k + j] += r[j];
    }
  }
}

// Recompute one chunk's states from its checkpoint (hs: h after each step, as: ā at each step).
template <int NS, bool Clamp>
void recompute_lanes(const Args<float>& a, LaneScratch& w, const float* Bp, int64_t t0, int64_t q_len) {
  const int64_t N = NS > 0 ? NS : a.dstate;
  for (int64_t q = 0; q < q_len; ++q) {
    const float* Bt = Bp + (t0 + q) * a.b_st;
    const v8f s = w.dt[t0 + q], su = w.dtu[t0 + q];
    const v8f* prev = q > 0 ? &w.hs[(q - 1) * N] : w.h.data();
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) {
      const v8f ab = vexp2_eighths<Clamp>(s * w.A2[n]);
      w.as[q * N + n] = ab;
      w.hs[q * N + n] = ab * prev[n] + su * Bt[n];
    }
  }
}

// Reverse recurrence over one recomputed chunk (samba-asr.md §2.1): dh_t = C_t·gy_t + ā_{t+1}·dh_{t+1}.
template <int NS>
void reverse_lanes(const Args<float>& a, int64_t r0, LaneScratch& w, const float* Bp, const float* Cp,
                   float* dBp, float* dCp, int64_t t0, int64_t q_len, v8f& dbias) {
  const int64_t N = NS > 0 ? NS : a.dstate;
  const v8f Dv = a.Dskip ? vload(a.Dskip + r0 % a.dim) : v8f{};
  for (int64_t q = q_len - 1; q >= 0; --q) {
    const int64_t t = t0 + q;
    const float* Bt = Bp + t * a.b_st;
    const float* Ct = Cp + t * a.c_st;
    const v8f* prev = q > 0 ? &w.hs[(q - 1) * N] : w.h.data();
    const v8f gy = w.gy[t], s = w.dt[t], su = w.dtu[t];
    v8f sdu[2] = {}, sdA[2] = {};  // two partial sums each, to halve the add chains
    // Per-lane parts of dC_t and dB_t, summed over the 8 lanes right here (8 sums per hsum8), so only
    // N/8 vectors per step reach memory instead of N.
    v8f dc_local[NS > 0 ? NS + 8 : 1], db_local[NS > 0 ? NS + 8 : 1];  // registers when N is fixed
    v8f* dc = NS > 0 ? dc_local : w.dCp.data();
    v8f* db = NS > 0 ? db_local : w.dBp.data();
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) {
      const v8f hv = w.hs[q * N + n], av = w.as[q * N + n];
      const v8f dh = Ct[n] * gy + w.carry[n];
      const v8f x = dh * av * prev[n];  // dh_t · ā_t h_{t-1} = dh_t · ∂h_t/∂(Δ_t A)
      dc[n] = gy * hv;
      db[n] = dh * su;
      sdu[n % 2] += dh * Bt[n];
      sdA[n % 2] += w.A[n] * x;
      w.dA[n] += s * x;
      w.carry[n] = dh * av;
    }
    reduce_lanes(dc, N, dCp + t * a.c_st);
    reduce_lanes(db, N, dBp + t * a.b_st);
    // dΔ_t = Σ_n dh (B u + A ā h_{t-1}) = u_t · Σ_n dh B + Σ_n A x
    const v8f ut = w.u[t];
    const v8f sdu_t = sdu[0] + sdu[1], sdA_t = sdA[0] + sdA[1];
    w.du[t] = Dv * gy + s * sdu_t;
    const v8f draw = (ut * sdu_t + sdA_t) * w.dsp[t];
    w.ddelta[t] = draw;
    dbias += draw;
    if (a.z) {
      const v8f sz = w.sz[t], zt = w.z[t];
      w.dz[t] = w.g[t] * w.y[t] * sz * (1.0f + zt * (1.0f - sz));  // y: before the gate, saved
    }
  }
}

template <int NS> void backward_lanes(const Args<float>& a, int64_t grp, int tid, LaneScratch& w) {
  const int64_t N = NS > 0 ? NS : a.dstate, L = a.len, Q = a.chunk, nck = (L + Q - 1) / Q;
  const int64_t r0 = 8 * grp, b = r0 / a.dim, d0 = r0 % a.dim;
  for (int j = 0; j < 8; ++j) {
    row_delta_v8(a, b, d0 + j, w.row(0) + j * w.Ls, w.row(1) + j * w.Ls, w.row(2) + j * w.Ls);
    w.dD[j] = row_gate_v8(a, r0 + j, w.row(3) + j * w.Ls, w.row(4) + j * w.Ls);
  }
  v8f* lanes[] = {w.dt.data(), w.dtu.data(), w.dsp.data(), w.gy.data(), w.sz.data()};
  for (int k = 0; k < (a.z ? 5 : 4); ++k) rows_to_lanes(w.row(k), w.Ls, L, lanes[k]);
  rows_to_lanes(a.u + r0 * L, L, L, w.u.data());
  if (a.z) {
    rows_to_lanes(a.z + r0 * L, L, L, w.z.data());
    rows_to_lanes(a.dout + r0 * L, L, L, w.g.data());
    rows_to_lanes(a.ypre + r0 * L, L, L, w.y.data());
  }
  load_lane_weights(a, d0, w);
  const int64_t boff = b * a.b_sb + (d0 / a.b_dpg) * a.b_sg, coff = b * a.c_sb + (d0 / a.c_dpg) * a.c_sg;
  for (int64_t n = 0; n < N; ++n) {
    w.carry[n] = a.dlast ? gather8(a.dlast + r0 * N + n, N) : v8f{};
    w.dA[n] = v8f{};
  }
  v8f dbias{};
  const bool fast = exp_range_ok(w, L, N);
  for (int64_t c = nck - 1; c >= 0; --c) {
    const int64_t t0 = c * Q, q_len = std::min(Q, L - t0);
    for (int64_t n = 0; n < N; ++n) w.h[n] = gather8(a.ckpt + (r0 * nck + c) * N + n, nck * N);
    if (fast)
      recompute_lanes<NS, false>(a, w, a.Bm + boff, t0, q_len);
    else
      recompute_lanes<NS, true>(a, w, a.Bm + boff, t0, q_len);
    // B and C are time-varying here, so a step's N values are contiguous: t·N + n.
    reverse_lanes<NS>(a, r0, w, a.Bm + boff, a.Cm + coff, a.dB + tid * a.b_size + boff,
                      a.dC + tid * a.c_size + coff, t0, q_len, dbias);
  }
  lanes_to_rows(w.du.data(), L, a.du + r0 * L, L);
  lanes_to_rows(w.ddelta.data(), L, a.ddelta + r0 * L, L);
  if (a.z) lanes_to_rows(w.dz.data(), L, a.dz + r0 * L, L);
  for (int64_t n = 0; n < N; ++n) {
    if (a.dh0) scatter8(a.dh0 + r0 * N + n, N, w.carry[n]);
    float* dAt = a.dA + tid * a.dim * N + d0 * N + n;
    for (int j = 0; j < 8; ++j) dAt[j * N] += w.dA[n][j];
  }
  for (int j = 0; j < 8; ++j) {
    if (a.dD) a.dD[tid * a.dim + d0 + j] += w.dD[j];
    if (a.ddbias) a.ddbias[tid * a.dim + d0 + j] += dbias[j];
  }
}
