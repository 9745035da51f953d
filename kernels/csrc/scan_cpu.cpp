// Fused selective scan for the CPU: forward and hand-written backward (samba-asr.md §2, §6 option 6).
//
// One sequential recurrence per (batch, channel) row; rows are split across threads. Nothing of size
// (batch, channel, length, state) is ever allocated: the forward keeps only the state entering every
// chunk of CHUNK steps (`ckpt`), and the backward recomputes one chunk at a time from it into a small
// per-thread scratch buffer before running the reverse recurrence. This file holds the generic rows
// (any state size, float32 and float64); scan_cpu_lanes.h holds the faster float32 path that runs
// 8 channels side by side, used whenever B and C vary in time and channels come in groups of 8.
//
// Legend: u, dt (Δ), z, y: per-row sequences of length L; A: (D, N); B, C indexed through strides
// (batch sb, group sg, time st; state stride 1) so one kernel serves (Bsz,G,L,N), (Bsz,L,N) and the
// time-invariant (D,N) layout; a channel d uses group d / dpg. Gradients that several rows share
// (dA, dB, dC, dD, d delta_bias) go to per-thread partial buffers that the caller sums: no atomics,
// and results do not depend on thread timing.
//
// Built at first use by kernels/cpu.py with the system C++ compiler; plain C ABI, no torch headers.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <omp.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <type_traits>
#include <vector>

namespace {

// exp for float32, written so the compiler can vectorise it (no libm call in the loop).
// 2^x = 2^k * 2^f with k = round(x), |f| <= 1/2; 2^f by its Taylor series to degree 7
// (relative error below 1e-8, under float32 rounding). Results below 2^-126 flush to 0.
inline float exp_approx(float x) {
  float t = x * 1.4426950408889634f;
  const bool tiny = t < -126.0f;
  t = std::min(std::max(t, -126.0f), 127.0f);
  const float k = std::floor(t + 0.5f);
  const float f = (t - k) * 0.6931471805599453f;
  float p = 1.9841269841269841e-4f;
  p = p * f + 1.3888888888888889e-3f;
  p = p * f + 8.3333333333333333e-3f;
  p = p * f + 4.1666666666666667e-2f;
  p = p * f + 1.6666666666666667e-1f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return tiny ? 0.0f : p * scale;
}

// log(x) for x >= 1 (float32), vectorisable: x = m * 2^e with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, series to s^9.
inline float log_approx(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  int32_t e = ((bits >> 23) & 255) - 127;
  int32_t mbits = (bits & 0x7fffff) | 0x3f800000;
  float m;
  std::memcpy(&m, &mbits, sizeof(m));
  const bool big = m > 1.41421356f;
  m = big ? 0.5f * m : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 0.2f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return 2.0f * s * p + static_cast<float>(e) * 0.6931471805599453f;
}

inline float fexp(float x) { return exp_approx(x); }
inline double fexp(double x) { return std::exp(x); }

// softplus with the identity branch above 20 (as F.softplus and the Mamba kernels).
inline float softplus(float x) {
  const float e = exp_approx(std::min(x, 20.0f));
  const float small = e * (1.0f - e * (0.5f - e * (1.0f / 3.0f)));  // log1p for e < 1e-3
  const float lg = e < 1e-3f ? small : log_approx(1.0f + e);
  return x > 20.0f ? x : lg;
}
inline double softplus(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + fexp(-x)); }

template <typename T> struct Args {
  int64_t batch, dim, len, dstate, chunk;
  const T *u, *delta, *A, *Bm, *Cm, *Dskip, *z, *dbias, *h0;
  const uint8_t* mask;
  int64_t b_sb, b_sg, b_st, b_dpg, c_sb, c_sg, c_st, c_dpg;
  int32_t softplus;
  T *out, *last, *ckpt;
  T* ypre;  // y before the gate, Σ_n C·h + D·u (only with z; null otherwise): saved for dz
  // backward only
  const T *dout, *dlast;
  T *du, *ddelta, *dz, *dh0;
  T *dA, *dB, *dC, *dD, *ddbias;  // per-thread partials: thread k writes at k * (size of the tensor)
  int64_t b_size, c_size;         // element counts of the compact B and C tensors
};

// Per-row pre-pass: Δ_t (bias, softplus, mask), Δ_t·u_t and, for the backward, dΔ_t/d delta_raw.
// Each option is its own branch-free loop so that every loop vectorises.
template <typename T>
void row_delta(const Args<T>& a, int64_t b, int64_t d, T* __restrict dt, T* __restrict dtu,
               T* __restrict dgrad) {
  const int64_t L = a.len;
  const T* __restrict del = a.delta + (b * a.dim + d) * L;
  const T* __restrict u = a.u + (b * a.dim + d) * L;
  const T bias = a.dbias ? a.dbias[d] : T(0);
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) dt[t] = del[t] + bias;
  if (dgrad) {
    if (a.softplus) {
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) dgrad[t] = dt[t] > T(20) ? T(1) : sigmoid(dt[t]);
    } else {
      for (int64_t t = 0; t < L; ++t) dgrad[t] = T(1);
    }
  }
  if (a.softplus) {
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) dt[t] = softplus(dt[t]);
  }
  if (a.mask) {
    const uint8_t* __restrict m = a.mask + b * L;
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) dt[t] = m[t] ? dt[t] : T(0);
    if (dgrad) {
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) dgrad[t] = m[t] ? dgrad[t] : T(0);
    }
  }
#pragma omp simd
  for (int64_t t = 0; t < L; ++t) dtu[t] = dt[t] * u[t];
}

// out = (Σ_n C·h + D·u) · silu(z) for one row whose out holds Σ_n C·h; ypre keeps the value before
// the gate (the backward's dz needs it, and recomputing it costs an FMA per state element).
template <typename T> void finish_row(const Args<T>& a, int64_t r) {
  const int64_t L = a.len;
  T* __restrict y = a.out + r * L;
  const T* __restrict u = a.u + r * L;
  const T Dd = a.Dskip ? a.Dskip[r % a.dim] : T(0);
  if (a.z) {
    const T* __restrict zr = a.z + r * L;
    T* __restrict yp = a.ypre + r * L;
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) {
      yp[t] = y[t] + Dd * u[t];
      y[t] = yp[t] * zr[t] * sigmoid(zr[t]);
    }
  } else {
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) y[t] += Dd * u[t];
  }
}

// NS > 0: the state size is a compile-time constant (loops unroll, the state stays in registers);
// NS == 0: any state size, read at run time.
template <typename T, int NS> void forward_rows(const Args<T>& a, int64_t r0, int64_t r1) {
  const int64_t N = NS > 0 ? NS : a.dstate, L = a.len;
  const int64_t nck = (L + a.chunk - 1) / a.chunk;
  std::vector<T> dt(L), dtu(L), hv(N);
  alignas(64) T hl[NS > 0 ? NS : 1];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / a.dim, d = r % a.dim;
    row_delta(a, b, d, dt.data(), dtu.data(), static_cast<T*>(nullptr));
    const T* Ad = a.A + d * N;
    const T* Bp = a.Bm + b * a.b_sb + (d / a.b_dpg) * a.b_sg;
    const T* Cp = a.Cm + b * a.c_sb + (d / a.c_dpg) * a.c_sg;
    T* __restrict hp = NS > 0 ? hl : hv.data();
    for (int64_t n = 0; n < N; ++n) hp[n] = a.h0 ? a.h0[r * N + n] : T(0);
    T* __restrict y = a.out + r * L;
    for (int64_t c = 0; c < nck; ++c) {
      std::memcpy(a.ckpt + (r * nck + c) * N, hp, N * sizeof(T));
      const int64_t t1 = std::min(L, (c + 1) * a.chunk);
      for (int64_t t = c * a.chunk; t < t1; ++t) {
        const T* __restrict Bt = Bp + t * a.b_st;
        const T* __restrict Ct = Cp + t * a.c_st;
        const T s = dt[t], su = dtu[t];
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          hp[n] = fexp(s * Ad[n]) * hp[n] + su * Bt[n];
          acc += Ct[n] * hp[n];
        }
        y[t] = acc;
      }
    }
    std::memcpy(a.last + r * N, hp, N * sizeof(T));
    finish_row(a, r);
  }
}

// Recompute the states of one chunk from its checkpoint: hs[q] = h after step t0+q, as[q] = ā there.
template <typename T, int NS>
void recompute_chunk(const Args<T>& a, const T* h_in, const T* dt, const T* dtu, const T* Ad, const T* Bp,
                     int64_t t0, int64_t q_len, T* hs, T* as) {
  const int64_t N = NS > 0 ? NS : a.dstate;
  const T* __restrict prev = h_in;
  for (int64_t q = 0; q < q_len; ++q) {
    const int64_t t = t0 + q;
    const T* __restrict Bt = Bp + t * a.b_st;
    T* __restrict hq = hs + q * N;
    T* __restrict aq = as + q * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) {
      aq[n] = fexp(dt[t] * Ad[n]);
      hq[n] = aq[n] * prev[n] + dtu[t] * Bt[n];
    }
    prev = hq;
  }
}

template <typename T> struct Args;
template <typename T> struct RowGrads {
  std::vector<T> dt, dtu, dsp, gy, hs, as, carry, dA;
  RowGrads() = default;
  explicit RowGrads(const Args<T>& a)
      : dt(a.len), dtu(a.len), dsp(a.len), gy(a.len), hs(a.chunk * a.dstate),
        as(a.chunk * a.dstate), carry(a.dstate), dA(a.dstate) {}
};

// Per-row gate pre-pass for the backward: gy = dout·silu(z) (the gradient reaching y), dz (which
// needs only the saved y before the gate, not the recurrence) and dD = Σ_t gy·u. Vectorised over t,
// so the reverse loop below does no transcendental per step.
template <typename T> T row_gate(const Args<T>& a, int64_t r, T* __restrict gy) {
  const int64_t L = a.len;
  const T* __restrict g = a.dout + r * L;
  const T* __restrict u = a.u + r * L;
  if (a.z) {
    const T* __restrict zr = a.z + r * L;
    const T* __restrict yp = a.ypre + r * L;
    T* __restrict dz = a.dz + r * L;
#pragma omp simd
    for (int64_t t = 0; t < L; ++t) {
      const T sz = sigmoid(zr[t]);
      dz[t] = g[t] * yp[t] * sz * (T(1) + zr[t] * (T(1) - sz));
      gy[t] = g[t] * zr[t] * sz;
    }
  } else {
    std::memcpy(gy, g, L * sizeof(T));
  }
  T dD = 0;
#pragma omp simd reduction(+ : dD)
  for (int64_t t = 0; t < L; ++t) dD += gy[t] * u[t];
  return dD;
}

// Reverse recurrence over one recomputed chunk (samba-asr.md §2.1): dh_t = C_t·gy_t + ā_{t+1}·dh_{t+1}.
template <typename T, int NS>
void reverse_chunk(const Args<T>& a, int64_t r, int64_t t0, int64_t q_len, const T* h_in, const T* Ad,
                   const T* Bp, const T* Cp, T* dBp, T* dCp, RowGrads<T>& w, T& dbias) {
  const int64_t N = NS > 0 ? NS : a.dstate, L = a.len;
  const T* __restrict u = a.u + r * L;
  const T Dd = a.Dskip ? a.Dskip[r % a.dim] : T(0);
  T* __restrict carry = w.carry.data();
  T* __restrict dA = w.dA.data();
  for (int64_t q = q_len - 1; q >= 0; --q) {
    const int64_t t = t0 + q;
    const T* __restrict hq = w.hs.data() + q * N;
    const T* __restrict aq = w.as.data() + q * N;
    const T* __restrict hprev = q > 0 ? hq - N : h_in;
    const T* __restrict Bt = Bp + t * a.b_st;
    const T* __restrict Ct = Cp + t * a.c_st;
    T* __restrict dBt = dBp + t * a.b_st;
    T* __restrict dCt = dCp + t * a.c_st;
    const T gy = w.gy[t], s = w.dt[t], su = w.dtu[t], ut = u[t];
    T sum_du = 0, sum_dd = 0;
#pragma omp simd reduction(+ : sum_du, sum_dd)
    for (int64_t n = 0; n < N; ++n) {
      const T dh = Ct[n] * gy + carry[n];
      const T ah = aq[n] * hprev[n];  // ā_t h_{t-1} = h_t - b̄_t
      dCt[n] += gy * hq[n];
      dBt[n] += dh * su;
      sum_du += dh * Bt[n];
      sum_dd += dh * (Bt[n] * ut + Ad[n] * ah);
      dA[n] += dh * s * ah;
      carry[n] = dh * aq[n];
    }
    a.du[r * L + t] = Dd * gy + s * sum_du;
    const T draw = sum_dd * w.dsp[t];
    a.ddelta[r * L + t] = draw;
    dbias += draw;
  }
}

template <typename T, int NS> void backward_row(const Args<T>& a, int64_t r, int tid, RowGrads<T>& w) {
  const int64_t N = NS > 0 ? NS : a.dstate, L = a.len, Q = a.chunk;
  const int64_t nck = (L + Q - 1) / Q;
  const int64_t b = r / a.dim, d = r % a.dim;
  row_delta(a, b, d, w.dt.data(), w.dtu.data(), w.dsp.data());
  const T dD = row_gate(a, r, w.gy.data());
  const T* Ad = a.A + d * N;
  const int64_t boff = b * a.b_sb + (d / a.b_dpg) * a.b_sg;
  const int64_t coff = b * a.c_sb + (d / a.c_dpg) * a.c_sg;
  T* dBp = a.dB + tid * a.b_size + boff;
  T* dCp = a.dC + tid * a.c_size + coff;
  T dbias = 0;
  for (int64_t n = 0; n < N; ++n) w.carry[n] = a.dlast ? a.dlast[r * N + n] : T(0), w.dA[n] = 0;
  for (int64_t c = nck - 1; c >= 0; --c) {
    const int64_t t0 = c * Q, q_len = std::min(Q, L - t0);
    const T* h_in = a.ckpt + (r * nck + c) * N;
    recompute_chunk<T, NS>(a, h_in, w.dt.data(), w.dtu.data(), Ad, a.Bm + boff, t0, q_len, w.hs.data(),
                           w.as.data());
    reverse_chunk<T, NS>(a, r, t0, q_len, h_in, Ad, a.Bm + boff, a.Cm + coff, dBp, dCp, w, dbias);
  }
  if (a.dh0) std::memcpy(a.dh0 + r * N, w.carry.data(), N * sizeof(T));
  T* dAt = a.dA + tid * a.dim * N + d * N;
  for (int64_t n = 0; n < N; ++n) dAt[n] += w.dA[n];
  if (a.dD) a.dD[tid * a.dim + d] += dD;
  if (a.ddbias) a.ddbias[tid * a.dim + d] += dbias;
}

#include "scan_cpu_lanes.h"

// Split rows into `threads` contiguous ranges; thread k gets partial-buffer slot k. OpenMP, not
// std::thread: loaded into a Python process, this library binds to the libgomp that torch already
// loaded (same soname), so the scan runs on torch's own worker threads. Separate threads would
// compete for the cores with torch's workers, which spin for milliseconds after every parallel op.
template <typename F> void parallel_rows(int64_t rows, int threads, F fn) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, rows)));
#pragma omp parallel num_threads(threads)
  {
    const int k = omp_get_thread_num(), nt = omp_get_num_threads();
    fn(rows * k / nt, rows * (k + 1) / nt, k);
  }
}

template <typename T>
int run_fwd(const Args<T>* a, int threads, void (*fwd)(const Args<T>&, int64_t, int64_t)) {
  parallel_rows(a->batch * a->dim, threads,
                [a, fwd](int64_t r0, int64_t r1, int) { fwd(*a, r0, r1); });
  return 0;
}

template <typename T, int NS>
int run_bwd(const Args<T>* a, int threads) {
  parallel_rows(a->batch * a->dim, threads, [a](int64_t r0, int64_t r1, int k) {
    RowGrads<T> w(*a);
    for (int64_t r = r0; r < r1; ++r) backward_row<T, NS>(*a, r, k, w);
  });
  return 0;
}

}  // namespace

extern "C" {

// float32: the channel-lane path when B and C vary in time and channels come in groups of 8 (the
// Mamba case); generic rows otherwise. N = 16 (Mamba's default) gets compile-time loops in both.
int scan_f32_fwd(const Args<float>* a, int threads) {
  if (lanes_ok(*a)) {
    auto rows = a->dstate == 16 ? forward_lanes<16> : forward_lanes<0>;
    parallel_rows(a->batch * a->dim / 8, threads, [a, rows](int64_t g0, int64_t g1, int) {
      LaneScratch w(*a);
      for (int64_t g = g0; g < g1; ++g) rows(*a, g, w);
    });
    return 0;
  }
  switch (a->dstate) {
    case 16: return run_fwd<float>(a, threads, forward_rows<float, 16>);
    case 4: return run_fwd<float>(a, threads, forward_rows<float, 4>);
    default: return run_fwd<float>(a, threads, forward_rows<float, 0>);
  }
}
int scan_f32_bwd(const Args<float>* a, int threads) {
  if (lanes_ok(*a)) {
    auto rows = a->dstate == 16 ? backward_lanes<16> : backward_lanes<0>;
    parallel_rows(a->batch * a->dim / 8, threads, [a, rows](int64_t g0, int64_t g1, int k) {
      LaneScratch w(*a);
      for (int64_t g = g0; g < g1; ++g) rows(*a, g, k, w);
    });
    return 0;
  }
  switch (a->dstate) {
    case 16: return run_bwd<float, 16>(a, threads);
    case 4: return run_bwd<float, 4>(a, threads);
    default: return run_bwd<float, 0>(a, threads);
  }
}
// float64 is for tests and gradcheck: generic loops only.
int scan_f64_fwd(const Args<double>* a, int threads) {
  return run_fwd<double>(a, threads, forward_rows<double, 0>);
}
int scan_f64_bwd(const Args<double>* a, int threads) { return run_bwd<double, 0>(a, threads); }
}
