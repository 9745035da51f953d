// Channel-lane float32 path: 8 consecutive channels of one batch entry run side by side in the 8
// lanes of a vector (GCC vector extensions, so the same source builds for AVX2, AVX-512 or NEON).
// The 8 channels share B_t and C_t (same group), so every B/C value is one broadcast, the output sum
// over the state needs no horizontal reduction, and the per-step bookkeeping is paid once per 8
// channels. Only dB and dC, which sum over channels, need a reduction across lanes; it runs once per
// step, eight sums at a time (hsum8). Same maths as the generic rows in scan_cpu.cpp, which serve
// float64, time-invariant B/C and channel counts that are not multiples of 8; tests cover both paths.
// Vector helpers (exp, transposes, sums): scan_cpu_vec.h.
// Included by scan_cpu.cpp inside its anonymous namespace.

#include "scan_cpu_vec.h"

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

float row_gate_v8(const Args<float>& a, int64_t r, float* gy) {
  const int64_t L = a.len, L8 = L / 8 * 8;
  const float* g = a.dout + r * L;
  const float* u = a.u + r * L;
  const float* z = a.z ? a.z + r * L : nullptr;
  const float* yp = z ? a.ypre + r * L : nullptr;
  float* dz = z ? a.dz + r * L : nullptr;
  v8f dD{};
  for (int64_t t = 0; t < L8; t += 8) {
    v8f gv = vload(g + t);
    if (z) {
      const v8f zv = vload(z + t), s = vsigmoid(zv);
      vstore(dz + t, gv * vload(yp + t) * s * (1.0f + zv * (1.0f - s)));
      gv = gv * zv * s;
    }
    vstore(gy + t, gv);
    dD += gv * vload(u + t);
  }
  float total = 0.0f;
  for (int j = 0; j < 8; ++j) total += dD[j];
  for (int64_t t = L8; t < L; ++t) {
    const float s = z ? sigmoid(z[t]) : 1.0f;
    if (z) dz[t] = g[t] * yp[t] * s * (1.0f + z[t] * (1.0f - s));
    gy[t] = z ? g[t] * z[t] * s : g[t];
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

// Per-thread scratch. `rows` holds 4 row buffers of 8 rows each (padded stride Ls) for the per-row
// pre-passes; the lane-major buffers hold one vector (8 channels) per step; state-sized buffers one
// vector per state index; chunk buffers one vector per (step in chunk, state index).
struct LaneScratch {
  int64_t Ls;
  std::vector<float> rows;
  std::vector<v8f> dt, dtu, dsp, gy, u, du, ddelta;
  std::vector<v8f> A, A2, h, carry, dA, hs, as, dCp, dBp;
  std::vector<float> dD;
  explicit LaneScratch(const Args<float>& a)
      : Ls(a.len + 16), rows(4 * 8 * Ls), dt(a.len), dtu(a.len), dsp(a.len), gy(a.len), u(a.len),
        du(a.len), ddelta(a.len), A(a.dstate), A2(a.dstate), h(a.dstate), carry(a.dstate),
        dA(a.dstate), hs(a.chunk * a.dstate), as(a.chunk * a.dstate), dCp(a.dstate + 8),
        dBp(a.dstate + 8), dD(8) {}
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
  }
}

template <int NS> void backward_lanes(const Args<float>& a, int64_t grp, int tid, LaneScratch& w) {
  const int64_t N = NS > 0 ? NS : a.dstate, L = a.len, Q = a.chunk, nck = (L + Q - 1) / Q;
  const int64_t r0 = 8 * grp, b = r0 / a.dim, d0 = r0 % a.dim;
  for (int j = 0; j < 8; ++j) {
    row_delta_v8(a, b, d0 + j, w.row(0) + j * w.Ls, w.row(1) + j * w.Ls, w.row(2) + j * w.Ls);
    w.dD[j] = row_gate_v8(a, r0 + j, w.row(3) + j * w.Ls);  // also writes row r0 + j of dz
  }
  v8f* lanes[] = {w.dt.data(), w.dtu.data(), w.dsp.data(), w.gy.data()};
  for (int k = 0; k < 4; ++k) rows_to_lanes(w.row(k), w.Ls, L, lanes[k]);
  rows_to_lanes(a.u + r0 * L, L, L, w.u.data());
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
