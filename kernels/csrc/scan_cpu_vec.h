// Explicitly vectorised float32 rows for state sizes N = 8·NV (8, 16, 32): the state, the reverse
// carry and the dA accumulator live in NV registers of 8 floats (GCC vector extensions, so the same
// source builds for AVX2, AVX-512 or NEON). Same maths as the generic loops in scan_cpu.cpp, which
// serve every other N and float64; the tests cover both paths (N = 16 here, N = 1 and 4 there).
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

// 2^t, lane-wise: 2^k · 2^f with k = round(t) (by the 1.5·2^23 trick), 2^f by its Taylor series to
// degree 7 (relative error ~1e-8). t is clamped to [-126, 127], so tiny results are ~1e-38, not 0.
inline v8f vexp2(v8f t) {
  t = t < -126.0f ? vset(-126.0f) : t;
  t = t > 127.0f ? vset(127.0f) : t;
  const v8f k = (t + 12582912.0f) - 12582912.0f;
  const v8f f = (t - k) * 0.6931471805599453f;
  v8f p = vset(1.9841269841269841e-4f);
  p = p * f + 1.3888888888888889e-3f;
  p = p * f + 8.3333333333333333e-3f;
  p = p * f + 4.1666666666666667e-2f;
  p = p * f + 1.6666666666666667e-1f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const v8i bits = (__builtin_convertvector(k, v8i) + 127) << 23;
  return p * __builtin_bit_cast(v8f, bits);
}

// Eight horizontal sums at once: r[j] = Σ_lanes v[j]. Replaces eight separate reductions per step
// by 21 shuffles and adds per eight steps, which matters because every step of the scan needs one.
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

// Reduce `count` per-step partial vectors (stored consecutively, `count` rounded up to 8 with zeros)
// into out[0..count).
inline void reduce_steps(const v8f* parts, int64_t count, float* out) {
  for (int64_t q = 0; q < count; q += 8) {
    const v8f r = hsum8(parts + q);
    const int64_t m = std::min<int64_t>(8, count - q);
    for (int64_t j = 0; j < m; ++j) out[q + j] = r[j];
  }
}

constexpr float kLog2e = 1.4426950408889634f;

// Per-thread scratch of the vector backward: the generic buffers plus the per-step partial sums.
struct VecScratch : RowGrads<float> {
  int64_t stride;           // chunk rounded up to 8
  std::vector<v8f> parts;   // 3 x stride partial-sum vectors
  std::vector<float> sums;  // 3 x chunk reduced sums
  explicit VecScratch(const Args<float>& a)
      : RowGrads<float>(a), stride((a.chunk + 7) / 8 * 8), parts(3 * stride), sums(3 * a.chunk) {}
};

template <int NV> void forward_rows_v8(const Args<float>& a, int64_t r0, int64_t r1) {
  constexpr int64_t N = 8 * NV;
  const int64_t L = a.len, nck = (L + a.chunk - 1) / a.chunk;
  std::vector<float> dt(L), dtu(L), ysum(L);
  std::vector<v8f> parts((a.chunk + 7) / 8 * 8, v8f{});  // per-step partial sums of C·h
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / a.dim, d = r % a.dim;
    row_delta(a, b, d, dt.data(), dtu.data(), static_cast<float*>(nullptr));
    const float* Bp = a.Bm + b * a.b_sb + (d / a.b_dpg) * a.b_sg;
    const float* Cp = a.Cm + b * a.c_sb + (d / a.c_dpg) * a.c_sg;
    const float Dd = a.Dskip ? a.Dskip[d] : 0.0f;
    const float* u = a.u + r * L;
    float* y = a.out + r * L;
    v8f A2[NV], h[NV];
    for (int i = 0; i < NV; ++i) {
      A2[i] = vload(a.A + d * N + 8 * i) * kLog2e;  // exp(Δ·A) = 2^(Δ·A·log2 e)
      h[i] = a.h0 ? vload(a.h0 + r * N + 8 * i) : v8f{};
    }
    for (int64_t c = 0; c < nck; ++c) {
      for (int i = 0; i < NV; ++i) vstore(a.ckpt + (r * nck + c) * N + 8 * i, h[i]);
      const int64_t t0 = c * a.chunk, q_len = std::min(L - t0, a.chunk);
      for (int64_t q = 0; q < q_len; ++q) {
        const float* Bt = Bp + (t0 + q) * a.b_st;
        const float* Ct = Cp + (t0 + q) * a.c_st;
        const v8f s = vset(dt[t0 + q]), su = vset(dtu[t0 + q]);
        v8f acc{};
        for (int i = 0; i < NV; ++i) {
          h[i] = vexp2(s * A2[i]) * h[i] + su * vload(Bt + 8 * i);
          acc += vload(Ct + 8 * i) * h[i];
        }
        parts[q] = acc;
      }
      for (int64_t q = q_len; q < (q_len + 7) / 8 * 8; ++q) parts[q] = v8f{};
      reduce_steps(parts.data(), q_len, ysum.data() + t0);
    }
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) y[t] = ysum[t] + Dd * u[t];
    for (int i = 0; i < NV; ++i) vstore(a.last + r * N + 8 * i, h[i]);
    if (a.z) {
      const float* zr = a.z + r * L;
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) y[t] = y[t] * zr[t] * sigmoid(zr[t]);
    }
  }
}

// One chunk of the backward for one row: recompute the states from the checkpoint into w.hs / w.as,
// then run the reverse recurrence (samba-asr.md §2.1) with carry and dA held in registers.
template <int NV>
void backward_chunk_v8(const Args<float>& a, int64_t r, int64_t t0, int64_t q_len, const float* Bp,
                       const float* Cp, float* dBp, float* dCp, VecScratch& w, v8f* carry, v8f* dA,
                       float& dbias) {
  constexpr int64_t N = 8 * NV;
  const int64_t L = a.len, d = r % a.dim;
  const float Dd = a.Dskip ? a.Dskip[d] : 0.0f;
  const float* u = a.u + r * L;
  const float* h_in = a.ckpt + (r * ((L + a.chunk - 1) / a.chunk) + t0 / a.chunk) * N;
  v8f A[NV], A2[NV], h[NV];
  for (int i = 0; i < NV; ++i) {
    A[i] = vload(a.A + d * N + 8 * i);
    A2[i] = A[i] * kLog2e;
    h[i] = vload(h_in + 8 * i);
  }
  for (int64_t q = 0; q < q_len; ++q) {
    const float* Bt = Bp + (t0 + q) * a.b_st;
    const v8f s = vset(w.dt[t0 + q]), su = vset(w.dtu[t0 + q]);
    for (int i = 0; i < NV; ++i) {
      const v8f ab = vexp2(s * A2[i]);
      h[i] = ab * h[i] + su * vload(Bt + 8 * i);
      vstore(w.as.data() + q * N + 8 * i, ab);
      vstore(w.hs.data() + q * N + 8 * i, h[i]);
    }
  }
  for (int64_t q = q_len - 1; q >= 0; --q) {
    const int64_t t = t0 + q;
    const float* Bt = Bp + t * a.b_st;
    const float* Ct = Cp + t * a.c_st;
    float* dBt = dBp + t * a.b_st;
    float* dCt = dCp + t * a.c_st;
    const float* hq = w.hs.data() + q * N;
    const float* aq = w.as.data() + q * N;
    const float* hprev = q > 0 ? hq - N : h_in;
    const v8f gy = vset(w.gy[t]), s = vset(w.dt[t]), su = vset(w.dtu[t]), ut = vset(u[t]);
    v8f sdu{}, sdd{}, ych{};  // per-step partial sums over the state, reduced after the chunk
    for (int i = 0; i < NV; ++i) {
      const v8f C = vload(Ct + 8 * i), B = vload(Bt + 8 * i), hv = vload(hq + 8 * i);
      const v8f av = vload(aq + 8 * i);
      const v8f dh = C * gy + carry[i];
      const v8f ah = av * vload(hprev + 8 * i);  // ā_t h_{t-1} = h_t - b̄_t
      ych += C * hv;
      vstore(dCt + 8 * i, vload(dCt + 8 * i) + gy * hv);
      vstore(dBt + 8 * i, vload(dBt + 8 * i) + dh * su);
      sdu += dh * B;
      sdd += dh * (B * ut + A[i] * ah);
      dA[i] += dh * ah * s;
      carry[i] = dh * av;
    }
    w.parts[q] = sdu;
    w.parts[w.stride + q] = sdd;
    w.parts[2 * w.stride + q] = ych;
  }
  for (int k = 0; k < 3; ++k)
    for (int64_t q = q_len; q < (q_len + 7) / 8 * 8; ++q) w.parts[k * w.stride + q] = v8f{};
  float* sums = w.sums.data();  // [Σ dh·B | Σ dh·(B·u + A·ā·h_prev) | Σ C·h] for this chunk
  reduce_steps(w.parts.data(), q_len, sums);
  reduce_steps(w.parts.data() + w.stride, q_len, sums + a.chunk);
  if (a.z) reduce_steps(w.parts.data() + 2 * w.stride, q_len, sums + 2 * a.chunk);
  for (int64_t q = 0; q < q_len; ++q) {
    const int64_t t = t0 + q;
    a.du[r * L + t] = Dd * w.gy[t] + w.dt[t] * sums[q];
    const float draw = sums[a.chunk + q] * w.dsp[t];
    a.ddelta[r * L + t] = draw;
    dbias += draw;
  }
  if (a.z) {
    for (int64_t q = 0; q < q_len; ++q) {
      const int64_t t = t0 + q;
      const float yv = sums[2 * a.chunk + q] + Dd * u[t], sz = w.sz[t], zt = a.z[r * L + t];
      a.dz[r * L + t] = a.dout[r * L + t] * yv * sz * (1.0f + zt * (1.0f - sz));
    }
  }
}

template <int NV> void backward_row_v8(const Args<float>& a, int64_t r, int tid, VecScratch& w) {
  constexpr int64_t N = 8 * NV;
  const int64_t L = a.len, Q = a.chunk, nck = (L + Q - 1) / Q;
  const int64_t b = r / a.dim, d = r % a.dim;
  row_delta(a, b, d, w.dt.data(), w.dtu.data(), w.dsp.data());
  const float dD = row_gate(a, r, w.gy.data(), w.sz.data());
  const int64_t boff = b * a.b_sb + (d / a.b_dpg) * a.b_sg;
  const int64_t coff = b * a.c_sb + (d / a.c_dpg) * a.c_sg;
  v8f carry[NV], dA[NV];
  for (int i = 0; i < NV; ++i) {
    carry[i] = a.dlast ? vload(a.dlast + r * N + 8 * i) : v8f{};
    dA[i] = v8f{};
  }
  float dbias = 0.0f;
  for (int64_t c = nck - 1; c >= 0; --c) {
    backward_chunk_v8<NV>(a, r, c * Q, std::min(Q, L - c * Q), a.Bm + boff, a.Cm + coff,
                          a.dB + tid * a.b_size + boff, a.dC + tid * a.c_size + coff, w, carry, dA, dbias);
  }
  for (int i = 0; i < NV; ++i) {
    if (a.dh0) vstore(a.dh0 + r * N + 8 * i, carry[i]);
    float* dAt = a.dA + tid * a.dim * N + d * N + 8 * i;
    vstore(dAt, vload(dAt) + dA[i]);
  }
  if (a.dD) a.dD[tid * a.dim + d] += dD;
  if (a.ddbias) a.ddbias[tid * a.dim + d] += dbias;
}
