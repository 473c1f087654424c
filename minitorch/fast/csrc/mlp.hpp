// The native kernel of FusedMLPStep: whole SGD epochs of a small MLP. This header holds the
// vector math both training layouts share and the "rows" layout, one replica at a time;
// mlp_lanes.hpp holds the "lanes" layout, V replicas at a time, one per vector lane, which
// trains every group of V replicas (mlp_net.hpp decides which replicas go where).
//
// minitorch/fast/native.py compiles this once per architecture: the file that includes it
// defines NL (number of Linear layers), SIZES[NL + 1], ACTS[NL] (activation after each layer,
// NONE for the last) and LOSS, then includes mlp_net.hpp (which includes this header). Plain
// C++17 with GCC vector extensions, no torch headers, so it builds in a few seconds with the
// machine's g++.
//
// The rows layout: a replica's weights (a few KB) stay in L1 for every step of an epoch, all
// three products of a layer (forward, weight gradient, input gradient) are one register-blocked
// "broadcast a scalar, FMA a row of vectors" loop, and the activations, their derivatives, the
// loss gradient and the SGD update are fused into those loops instead of separate passes. Its
// cost: feature dimensions are padded to a multiple of V floats (25 -> 32: 28% more
// multiply-adds than needed, and a 2-wide layer uses 2 of 8 lanes).
//
// Layout, per replica: feature dimensions are padded to a multiple of V floats; padded lanes
// hold zeros and are only ever read into padded lanes, so they never reach a real value.
//   WT[l]  [P(in)][P(out)]   weight, transposed (forward and weight-gradient rows)
//   Wp[l]  [P(out)][P(in)]   weight as stored (input-gradient rows): WT transposed after
//                            each update, by 8 x 8 blocks (so the padded rows exist)
//   h[l]   [B][P(out)]       layer l's output after its activation (the last: model output)
//   g[l]   [B][P(out)]       gradient of the loss wrt layer l's pre-activation
//   d[l]   [B][P(out)]       TANH_REPORT layers only: 2 sech(pre-activation), saved by the
//                            forward for the backward
// The model's tensors ([R, out, in] weights, [R, out] biases) are read at the start of a
// replica's epoch and written back at its end, with the last step's gradients. Evaluation
// (mt_forward) has a layout of its own, with the rows as lanes: see forward_t.
//
// Both layouts compute every value by the same operations in the same order, with the FMAs
// written out (fmadd, fnmadd) rather than left to the compiler's contraction, so they give the
// same bits, whatever the vector width.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace mt {

constexpr int V = 8;  // floats per vector (AVX2; GCC splits or widens as the target allows)
typedef float vf __attribute__((vector_size(V * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(V * sizeof(int32_t))));
constexpr int nvec(int n) { return (n + V - 1) / V; }

// TANH_REPORT: tanh whose backward multiplies by the report's 4 / (e^z + e^-z) = 2 sech(z)
// instead of 1 - tanh(z)^2 (model.tanh_grad=report), to measure what that mistake changed.
enum { NONE = 0, TANH = 1, SIGMOID = 2, RELU = 3, TANH_REPORT = 4 };
enum { MSE = 0, MAE = 1 };

static_assert(V == 8, "splat and transpose8 are written for 8-float vectors");
static inline vf splat(float s) { return vf{s, s, s, s, s, s, s, s}; }  // one vbroadcastss
// (vf{} + s would add 0 first: an instruction more, and -0 would become +0.)

// Keeps v in a register from here on (no instruction): the compiler cannot re-read it from
// memory, e.g. fold its load into each of the FMAs that use it.
static inline __attribute__((always_inline)) void pin(vf& v) {
#if defined(__AVX__)
  asm("" : "+x"(v));
#else
  (void)v;
#endif
}

// c + a b and c - a b rounded once. Explicit, not left to the compiler's contraction of
// a * b + c, which depends on the surrounding code (and on -mtune: GCC avoids FMA chains on
// some CPUs): the layouts must round alike to give the same bits.
static inline vf fmadd(vf a, vf b, vf c) {
#if defined(__FMA__)
  return __builtin_ia32_vfmaddps256(a, b, c);
#else
  return a * b + c;
#endif
}
static inline vf fnmadd(vf a, vf b, vf c) {
#if defined(__FMA__)
  return __builtin_ia32_vfnmaddps256(a, b, c);
#else
  return c - a * b;
#endif
}

static inline vf vmin(vf a, vf b) {  // a < b ? a : b, so a NaN in b is kept
#if defined(__AVX__)
  return __builtin_ia32_minps256(a, b);  // one instruction instead of compare and blend
#else
  return a < b ? a : b;
#endif
}
static inline vf vmax(vf a, vf b) {  // a > b ? a : b, so a NaN in b is kept
#if defined(__AVX__)
  return __builtin_ia32_maxps256(a, b);
#else
  return a > b ? a : b;
#endif
}

// The polynomials below use fmadd explicitly, as the products: the same rounding wherever
// they are inlined.

// e^x with Cephes' expf polynomial (~1 ulp) for x in [-87, 88]; NaN stays NaN.
static inline vf vexp_in_range(vf x) {
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = fmadd(x, splat(1.44269504088896341f), magic) - magic;
  vf r = fnmadd(n, splat(0.693359375f), x);
  r = fnmadd(n, splat(-2.12194440e-4f), r);
  vf p = splat(1.9875691500e-4f);
  p = fmadd(p, r, splat(1.3981999507e-3f));
  p = fmadd(p, r, splat(8.3334519073e-3f));
  p = fmadd(p, r, splat(4.1665795894e-2f));
  p = fmadd(p, r, splat(1.6666665459e-1f));
  p = fmadd(p, r, splat(5.0000001201e-1f));
  p = fmadd(p, r * r, r) + 1.0f;
  vi k = __builtin_convertvector(n, vi);
  vf scale = (vf)((k + 127) << 23);
  return p * scale;
}

// e^x; x is clamped to [-87, 88], so the result saturates at ~1.6e-38 and ~1.7e38 instead of
// reaching 0 or inf; NaN stays NaN.
static inline vf vexp(vf x) {
  x = x > 88.0f ? splat(88.0f) : x;
  x = x < -87.0f ? splat(-87.0f) : x;
  return vexp_in_range(x);
}

// tanh(x) with the rational minimax fit of Eigen's float tanh (generic_fast_tanh_float):
// x p(x^2) / q(x^2), p of degree 6 and q of degree 3 in x^2. Its coefficients here are Eigen's
// divided by q's leading one, so q's first Horner step is an addition (an FADD pipe) instead
// of an FMA. x is clamped to +-7.9822669, the least float where this evaluation gives exactly
// 1 (found by scanning every float): below it the result stays under 1, at and beyond it is
// exactly +-1 (as torch), so no clamp of the output is needed; inf gives +-1, NaN stays NaN.
// Measured over every float (2026-12-01): at most 2.94e-7 from tanh (Eigen's form with the
// output clamp: 2.92e-7; torch's 2 sigmoid(2x) - 1: 1.8e-7), relative error 2.7e-7 for tiny x.
// Cost: 2 min/max, 2 multiplies, 8 FMAs, 1 addition, 1 division (was 3 min/max, 9 FMAs); in
// a loop like the kernel's tanh pass ~10% cheaper (5.3 vs 5.8 TSC ticks a vector, least).
// Tried and left out (measured): the division as rcp + a Newton step (15-40% slower: the FMA
// pipes, not the divider, are the bottleneck; and inf gave NaN); a refitted degree 11/6 form
// (one FMA less, ~20% cheaper, but 3.6e-7 from tanh in float32: over the bound).
static inline vf vtanh(vf x) {
  x = vmax(splat(-7.9822669f), vmin(splat(7.9822669f), x));  // NaN kept (see vmin)
  const vf x2 = x * x;
  vf p = splat(-2.3039842e-10f);
  p = fmadd(p, x2, splat(1.6692459e-07f));
  p = fmadd(p, x2, splat(-7.1809816e-05f));
  p = fmadd(p, x2, splat(4.2747851e-02f));
  p = fmadd(p, x2, splat(1.2399014e+01f));
  p = fmadd(p, x2, splat(5.3182349e+02f));
  p = fmadd(p, x2, splat(4.0838643e+03f));
  vf q = x2 + splat(9.8922493e+01f);
  q = fmadd(q, x2, splat(1.8931097e+03f));
  q = fmadd(q, x2, splat(4.0838647e+03f));
  return (p * x) / q;
}

// tanh(z) and the report's derivative 4 / (e^z + e^-z) = 2 sech(z) from one exponential and
// one division: with e = e^-|z| and q = 1 / (1 + e^2), tanh(|z|) = 2q - 1 and 2 sech(z) = 4 e q.
// (vtanh plus a separate 2 sech made the report's epoch ~30% slower than the exact one; this,
// ~10%.) The derivative comes from z itself: from t = tanh(z), 2 sqrt(1 - t^2) would lose all
// precision as |t| -> 1.
// Measured on [-100, 100]: tanh within 1.8e-7 of the true value (vtanh: 2.9e-7), 2 sech(z)
// within 1.9e-7 relative (~6e-38 rather than 0 beyond |z| = 87); NaN stays NaN.
static inline vf tanh_report(vf z, vf& dtanh) {
  const vi sign = vi{} + INT32_MIN;  // the sign bit (splat(-0.0f) would be +0: 0 + -0 = +0)
  // e^-|z|: z with its sign bit set, so only the lower bound of vexp's range needs a clamp.
  const vf e = vexp_in_range(vmax(splat(-87.0f), (vf)((vi)z | sign)));
  const vf q = 1.0f / fmadd(e, e, splat(1.0f));
  dtanh = 4.0f * e * q;
  // 2q - 1 >= 0: z's sign copied in
  return (vf)((vi)fmadd(splat(2.0f), q, splat(-1.0f)) | ((vi)z & sign));
}

template <int ACT>
static inline vf activate(vf z) {
  if constexpr (ACT == TANH) {
    return vtanh(z);
  } else if constexpr (ACT == TANH_REPORT) {
    vf unused;
    return tanh_report(z, unused);
  } else if constexpr (ACT == SIGMOID) {
    return 1.0f / (1.0f + vexp(-z));
  } else if constexpr (ACT == RELU) {
    return z < 0.0f ? splat(0.0f) : z;  // keeps NaN, as torch.relu
  } else {
    return z;
  }
}

// f'(z) from what the forward saved: the activation a = f(z), or for TANH_REPORT the
// derivative itself (2 sech(z) from tanh_report, saved in D by the forward).
template <int ACT>
static inline vf dact(vf a) {
  if constexpr (ACT == TANH_REPORT) {
    return a;
  } else if constexpr (ACT == TANH) {
    return fnmadd(a, a, splat(1.0f));
  } else if constexpr (ACT == SIGMOID) {
    return a * (1.0f - a);
  } else {
    return a > 0.0f ? splat(1.0f) : splat(0.0f);
  }
}

// dst[c * ds] = column c of the 8 x 8 block whose row r is src[r * ss] (V = 8 floats).
static inline void transpose8(const vf* src, int ss, vf* dst, int ds) {
  vf r[8], t[8], u[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = src[i * ss];
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {  // interleave row pairs
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {  // then pairs of pairs
    u[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {  // then the 128-bit halves
    dst[i * ds] = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    dst[(i + 4) * ds] = __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// Epilogues: store; add a bias vector (one per column) and activate (for TANH_REPORT also
// saving 2 sech of the pre-activation in D); add a bias per row (rbias[r]) and activate;
// multiply by f'(H), the activation derivative from what the forward saved.
enum { EPI_STORE = 0, EPI_BIAS_ACT = 1, EPI_ROWBIAS_ACT = 2, EPI_TIMES_DACT = 3 };

// C[r][c0 .. c0+CH) = epilogue(sum_k A[r*ars + k*aks] * Bm[k][c0 .. c0+CH)) for RB rows.
// Every product of the MLP has this form; NV is the row length of Bm and C in vectors.
template <int NV, int CH, int RB, int EPI, int ACT>
static inline void block(int K, const float* __restrict A, int ars, int aks,
                         const vf* __restrict Bm, int c0, const vf* __restrict bias,
                         const float* __restrict rbias,
                         const vf* __restrict H, vf* __restrict C, vf* __restrict D) {
  vf acc[RB][CH];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < CH; ++c) {
      if constexpr (EPI == EPI_BIAS_ACT) acc[r][c] = bias[c0 + c];
      else if constexpr (EPI == EPI_ROWBIAS_ACT) acc[r][c] = splat(rbias[r]);
      else acc[r][c] = vf{};
    }
  for (int k = 0; k < K; ++k) {
    const vf* brow = Bm + k * NV + c0;
    vf b[CH];
#pragma GCC unroll 16
    for (int c = 0; c < CH; ++c) {
      b[c] = brow[c];
      // One load, used by RB FMAs: left alone, GCC folds it into each (RB loads).
      if constexpr (RB > 1 && RB * CH + CH < 16) pin(b[c]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      vf s = splat(A[r * ars + k * aks]);
#pragma GCC unroll 16
      for (int c = 0; c < CH; ++c) acc[r][c] = fmadd(s, b[c], acc[r][c]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < CH; ++c) {
      vf v = acc[r][c];
      if constexpr (EPI == EPI_BIAS_ACT && ACT == TANH_REPORT) {
        v = tanh_report(v, D[r * NV + c0 + c]);
      } else if constexpr (EPI == EPI_BIAS_ACT || EPI == EPI_ROWBIAS_ACT) {
        v = activate<ACT>(v);
      }
      if constexpr (EPI == EPI_TIMES_DACT) v = v * dact<ACT>(H[r * NV + c0 + c]);
      C[r * NV + c0 + c] = v;
    }
}

template <int NV, int CH, int RB, int EPI, int ACT>
static inline void row_block(int K, const float* A, int ars, int aks, const vf* Bm,
                             const vf* bias, const float* rbias, const vf* H, vf* C, vf* D) {
  int c0 = 0;
  for (; c0 + CH <= NV; c0 += CH)
    block<NV, CH, RB, EPI, ACT>(K, A, ars, aks, Bm, c0, bias, rbias, H, C, D);
  constexpr int REM = NV % CH;
  if constexpr (REM > 0)
    block<NV, REM, RB, EPI, ACT>(K, A, ars, aks, Bm, c0, bias, rbias, H, C, D);
}

// C[rows][NV] = epilogue(A[rows][K] . Bm[K][NV]), A read with strides (ars, aks); D[rows][NV]
// receives 2 sech(pre-activation) for EPI_BIAS_ACT with TANH_REPORT (else it is not touched).
template <int NV, int EPI, int ACT>
static void gemm(int rows, int K, const float* A, int ars, int aks, const vf* Bm,
                 const vf* bias, const vf* H, vf* C, const float* rbias = nullptr,
                 vf* D = nullptr) {
  // Rows x vectors per block: as many accumulators as the registers allow (16 vector
  // registers with AVX2, 32 with AVX-512VL). 5 rows also divide the report's 25 evenly.
  constexpr int CH = NV < 4 ? NV : 4;
#if defined(__AVX512VL__)
  constexpr int RB = CH >= 3 ? 5 : (CH == 2 ? 8 : 12);
#else
  constexpr int RB = CH >= 3 ? 3 : (CH == 2 ? 5 : 8);
#endif
  long r = 0;
  for (; r + RB <= rows; r += RB)
    row_block<NV, CH, RB, EPI, ACT>(K, A + r * ars, ars, aks, Bm, bias,
                                    EPI == EPI_ROWBIAS_ACT ? rbias + r : rbias, H + r * NV,
                                    C + r * NV, D ? D + r * NV : D);
  for (; r < rows; ++r)
    row_block<NV, CH, 1, EPI, ACT>(K, A + r * ars, ars, aks, Bm, bias,
                                   EPI == EPI_ROWBIAS_ACT ? rbias + r : rbias, H + r * NV,
                                   C + r * NV, D ? D + r * NV : D);
}

}  // namespace mt
