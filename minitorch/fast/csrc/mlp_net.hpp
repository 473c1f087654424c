// One MLP architecture on the kernels of mlp.hpp (rows layout) and mlp_lanes.hpp (lanes
// layout): forward, loss gradient, backward, SGD update in each, and the entry points
// minitorch/fast/native.py calls through ctypes. The including file defines NL, SIZES[NL + 1],
// ACTS[NL] and LOSS first (see mlp.hpp). With -DMT_PROFILE the lanes layout records the least
// time of each of its phases in mt::prof (csrc/profile.cpp prints them).
#pragma once

#include <cstring>
#include <thread>
#include <vector>

#include "mlp.hpp"
#include "mlp_lanes.hpp"

#ifndef MT_EVAL_CHUNK
#define MT_EVAL_CHUNK 64  // rows per evaluation block: a multiple of V
#endif

namespace mt {

// WT and gWT have P(in) rows and Wp has P(out) rows, the padding rows of WT and gWT zero, so
// that Wp is refreshed from WT by whole 8 x 8 block transposes.
struct Net {
  vf* WT[NL];
  vf* Wp[NL];
  vf* bias[NL];
  vf* gWT[NL];
  vf* gb[NL];
  vf* h[NL];
  vf* g[NL];
  vf* d[NL];  // TANH_REPORT layers: 2 sech(pre-activation), what their backward multiplies by
  void* mem;
};

constexpr int in_of(int l) { return SIZES[l]; }
constexpr int out_of(int l) { return SIZES[l + 1]; }

// Scratch for batches of up to `rows` rows, zeroed (padded lanes must start at zero).
static bool net_alloc(Net& n, int rows) {
  size_t total = 0;  // in vectors
  for (int l = 0; l < NL; ++l) {
    size_t I = in_of(l), O = out_of(l), NVO = nvec(O), NVI = nvec(I);
    const size_t D = ACTS[l] == TANH_REPORT ? size_t(rows) * NVO : 0;
    total += 2 * (NVI * V) * NVO + (NVO * V) * NVI + 2 * NVO + 2 * size_t(rows) * NVO + D;
  }
  size_t bytes = (total * sizeof(vf) + 63) / 64 * 64;
  n.mem = std::aligned_alloc(64, bytes);
  if (!n.mem) return false;
  std::memset(n.mem, 0, bytes);
  vf* p = static_cast<vf*>(n.mem);
  for (int l = 0; l < NL; ++l) {
    int I = in_of(l), O = out_of(l), NVO = nvec(O), NVI = nvec(I);
    n.WT[l] = p; p += NVI * V * NVO;
    n.gWT[l] = p; p += NVI * V * NVO;
    n.Wp[l] = p; p += NVO * V * NVI;
    n.bias[l] = p; p += NVO;
    n.gb[l] = p; p += NVO;
    n.h[l] = p; p += size_t(rows) * NVO;
    n.g[l] = p; p += size_t(rows) * NVO;
    n.d[l] = nullptr;
    if (ACTS[l] == TANH_REPORT) { n.d[l] = p; p += size_t(rows) * NVO; }
  }
  return true;
}

// Replica r's parameters from the model's [R, out, in] weights and [R, out] biases.
static void load(Net& n, float* const* W, float* const* b, long r) {
  for (int l = 0; l < NL; ++l) {
    const int I = in_of(l), O = out_of(l), PO = nvec(O) * V, PI = nvec(I) * V;
    const float* w = W[l] + r * O * I;
    const float* bb = b[l] + r * O;
    float* wt = reinterpret_cast<float*>(n.WT[l]);
    float* wp = reinterpret_cast<float*>(n.Wp[l]);
    float* bias = reinterpret_cast<float*>(n.bias[l]);
    // Padded lanes back to zero: a diverged replica before this one may have left NaN there.
    std::memset(wt, 0, sizeof(float) * PI * PO);
    std::memset(wp, 0, sizeof(float) * PO * PI);
    std::memset(bias, 0, sizeof(float) * PO);
    for (int o = 0; o < O; ++o) {
      bias[o] = bb[o];
      for (int i = 0; i < I; ++i) {
        wt[i * PO + o] = w[o * I + i];
        wp[o * PI + i] = w[o * I + i];
      }
    }
  }
}

// Write replica r's parameters and the last step's gradients back to the model's tensors.
static void store(const Net& n, float* const* W, float* const* b, float* const* gW,
                  float* const* gb, long r) {
  for (int l = 0; l < NL; ++l) {
    const int I = in_of(l), O = out_of(l), PO = nvec(O) * V;
    const float* wt = reinterpret_cast<const float*>(n.WT[l]);
    const float* gwt = reinterpret_cast<const float*>(n.gWT[l]);
    const float* bias = reinterpret_cast<const float*>(n.bias[l]);
    const float* gbias = reinterpret_cast<const float*>(n.gb[l]);
    for (int o = 0; o < O; ++o) {
      b[l][r * O + o] = bias[o];
      gb[l][r * O + o] = gbias[o];
      for (int i = 0; i < I; ++i) {
        W[l][(r * O + o) * I + i] = wt[i * PO + o];
        gW[l][(r * O + o) * I + i] = gwt[i * PO + o];
      }
    }
  }
}

// h[l] = act(A . W^T + b) for layers l..NL-1; layer 0 reads x ([rows][in], contiguous).
template <int l>
static inline void forward(Net& n, const float* x, int rows) {
  constexpr int I = in_of(l), O = out_of(l), NVO = nvec(O);
  const float* A = l == 0 ? x : reinterpret_cast<const float*>(n.h[l == 0 ? 0 : l - 1]);
  const int ars = l == 0 ? I : nvec(I) * V;
  gemm<NVO, EPI_BIAS_ACT, ACTS[l]>(rows, I, A, ars, 1, n.WT[l], n.bias[l], n.h[l], n.h[l],
                                   nullptr, n.d[l]);
  if constexpr (l + 1 < NL) forward<l + 1>(n, x, rows);
}

// g[NL-1] = dLoss/dOutput for the mean loss over the batch's rows x outputs; returns that loss
// when `want_loss`. Padded lanes are written as zeros.
static inline double loss_grad(Net& n, const float* y, int rows, bool want_loss) {
  constexpr int O = out_of(NL - 1), PO = nvec(O) * V;
  const float* z = reinterpret_cast<const float*>(n.h[NL - 1]);
  float* g = reinterpret_cast<float*>(n.g[NL - 1]);
  const float count = float(rows) * float(O);
  const float c = (LOSS == MSE ? 2.0f : 1.0f) / count;
  double sum = 0.0;
  for (int r = 0; r < rows; ++r) {
    for (int o = 0; o < O; ++o) {
      const float d = z[r * PO + o] - y[r * O + o];
      if (LOSS == MSE) {
        g[r * PO + o] = c * d;
        if (want_loss) sum += double(d) * double(d);
      } else {
        g[r * PO + o] = d > 0.0f ? c : (d < 0.0f ? -c : d * c);  // sign; keeps 0 and NaN
        if (want_loss) sum += d < 0.0f ? -double(d) : double(d);
      }
    }
    for (int o = O; o < PO; ++o) g[r * PO + o] = 0.0f;
  }
  return sum / double(count);
}

// Gradients of layers l..0 from g[l], using the weights before this step's update.
template <int l>
static inline void backward(Net& n, const float* x, int rows) {
  constexpr int I = in_of(l), O = out_of(l), NVO = nvec(O), NVI = nvec(I);
  const float* A = l == 0 ? x : reinterpret_cast<const float*>(n.h[l == 0 ? 0 : l - 1]);
  const int hs = l == 0 ? I : NVI * V;
  // gW^T[i][:] = sum over rows of h[r][i] g[r][:]
  gemm<NVO, EPI_STORE, NONE>(I, rows, A, 1, hs, n.g[l], nullptr, n.gWT[l], n.gWT[l]);
  const vf* g = n.g[l];
  for (int c = 0; c < NVO; ++c) {
    vf s{};
    for (int r = 0; r < rows; ++r) s += g[r * NVO + c];
    n.gb[l][c] = s;
  }
  if constexpr (l > 0) {
    // g[l-1][r][:] = (sum_o g[l][r][o] W[o][:]) * f'(z[l-1][r][:])
    const vf* saved = ACTS[l - 1] == TANH_REPORT ? n.d[l - 1] : n.h[l - 1];
    gemm<NVI, EPI_TIMES_DACT, ACTS[l - 1]>(rows, O, reinterpret_cast<const float*>(g), NVO * V,
                                           1, n.Wp[l], nullptr, saved, n.g[l - 1]);
    backward<l - 1>(n, x, rows);
  }
}

template <int l>
static inline void update(Net& n, float lr) {
  constexpr int I = in_of(l), O = out_of(l), NVO = nvec(O), NVI = nvec(I);
  vf* wt = n.WT[l];
  const vf* gwt = n.gWT[l];
  const vf rate = splat(lr);
  for (int k = 0; k < I * NVO; ++k) wt[k] = fnmadd(rate, gwt[k], wt[k]);
  for (int c = 0; c < NVO; ++c) n.bias[l][c] = fnmadd(rate, n.gb[l][c], n.bias[l][c]);
  if constexpr (l > 0) {  // the input-gradient copy (layer 0 has none): Wp = WT^T
    for (int ib = 0; ib < NVI; ++ib)
      for (int ob = 0; ob < NVO; ++ob)
        transpose8(wt + ib * V * NVO + ob, NVO, n.Wp[l] + ob * V * NVI + ib, NVI);
  }
  if constexpr (l + 1 < NL) update<l + 1>(n, lr);
}

// out[R][N][out] = the model's output for x[R][N][in]. Evaluation only, so a layout of its own:
// features x rows ("feature-major"), CHUNK rows at a time. The rows are the vector lanes, so no
// lane is padding (CHUNK is a multiple of V) and the weights are read as scalars straight from
// the model's tensors: ~30% fewer multiply-adds and activations than the training layout.
template <int l>
static inline void forward_t(const float* const* W, const float* const* b, long r,
                             vf* const* hT) {
  constexpr int I = in_of(l), O = out_of(l), NV = MT_EVAL_CHUNK / V;
  gemm<NV, EPI_ROWBIAS_ACT, ACTS[l]>(O, I, W[l] + r * O * I, I, 1, hT[l], nullptr, hT[l + 1],
                                     hT[l + 1], b[l] + r * O);
  if constexpr (l + 1 < NL) forward_t<l + 1>(W, b, r, hT);
}

}  // namespace mt

namespace mt {

// body(r0, r1) over `threads` contiguous ranges of the R replicas, one std::thread each (the
// caller's thread takes the first); returns the first non-zero code. Replicas share nothing,
// so the ranges write disjoint memory. If a thread cannot be started, its range runs here.
template <class Body>
static int over_replicas(long R, int threads, Body body) {
  const long T = threads < 1 ? 1 : (threads > R ? R : threads);
  if (T <= 1) return body(0L, R);
  std::vector<int> rc(size_t(T), 0);
  std::vector<std::thread> pool;
  for (long t = 1; t < T; ++t) {
    const long r0 = R * t / T, r1 = R * (t + 1) / T;
    try {
      pool.emplace_back([&rc, &body, t, r0, r1] { rc[size_t(t)] = body(r0, r1); });
    } catch (...) {
      rc[size_t(t)] = body(r0, r1);
    }
  }
  rc[0] = body(0L, R / T);
  for (auto& th : pool) th.join();
  for (int code : rc)
    if (code != 0) return code;
  return 0;
}

// mt_train's work for replicas [r0, r1) in the rows layout, one replica at a time.
static int train_range(long r0, long r1, long N, long M, int batch, const float* x,
                       const float* y, const int64_t* order, float* const* W, float* const* b,
                       float* const* gW, float* const* gb, const float* lr, double* loss_out) {
  constexpr int IN0 = in_of(0), OUTL = out_of(NL - 1);
  Net n;
  if (!net_alloc(n, batch)) return 1;
  float* xb = static_cast<float*>(std::malloc(sizeof(float) * size_t(batch) * (IN0 + OUTL)));
  if (!xb) {
    std::free(n.mem);
    return 1;
  }
  float* yb = xb + size_t(batch) * IN0;
  for (long r = r0; r < r1; ++r) {
    load(n, W, b, r);
    double loss = 0.0;
    for (long s = 0; s < M; s += batch) {
      const int rows = int(M - s < batch ? M - s : batch);
      const float* xs = x + (r * N + s) * IN0;
      const float* ys = y + (r * N + s) * OUTL;
      if (order) {  // gather this batch's rows (a few hundred bytes)
        const int64_t* idx = order + r * M + s;
        for (int i = 0; i < rows; ++i) {
          std::memcpy(xb + i * IN0, x + (r * N + idx[i]) * IN0, sizeof(float) * IN0);
          std::memcpy(yb + i * OUTL, y + (r * N + idx[i]) * OUTL, sizeof(float) * OUTL);
        }
        xs = xb;
        ys = yb;
      }
      forward<0>(n, xs, rows);
      loss += loss_grad(n, ys, rows, loss_out != nullptr);
      backward<NL - 1>(n, xs, rows);
      update<0>(n, lr[r]);
    }
    store(n, W, b, gW, gb, r);
    if (loss_out) loss_out[r] += loss;
  }
  std::free(xb);
  std::free(n.mem);
  return 0;
}

// mt_forward's work for replicas [r0, r1).
static int forward_range(long r0, long r1, long N, const float* x, const float* const* W,
                         const float* const* b, float* out) {
  constexpr int IN0 = in_of(0), OUTL = out_of(NL - 1), NV = MT_EVAL_CHUNK / V;
  size_t total = 0;  // vectors: hT[l] is [SIZES[l]][NV]
  for (int l = 0; l <= NL; ++l) total += size_t(SIZES[l]) * NV;
  vf* mem = static_cast<vf*>(std::aligned_alloc(64, (total * sizeof(vf) + 63) / 64 * 64));
  if (!mem) return 1;
  std::memset(mem, 0, total * sizeof(vf));
  vf* hT[NL + 1];
  hT[0] = mem;
  for (int l = 0; l < NL; ++l) hT[l + 1] = hT[l] + size_t(SIZES[l]) * NV;
  float* in = reinterpret_cast<float*>(hT[0]);
  const float* z = reinterpret_cast<const float*>(hT[NL]);
  for (long r = r0; r < r1; ++r) {
    for (long s = 0; s < N; s += MT_EVAL_CHUNK) {
      const int rows = int(N - s < MT_EVAL_CHUNK ? N - s : MT_EVAL_CHUNK);
      const float* xs = x + (r * N + s) * IN0;
      for (int i = 0; i < IN0; ++i) {  // hT[0] = this chunk of x, transposed
        for (int j = 0; j < rows; ++j) in[i * MT_EVAL_CHUNK + j] = xs[j * IN0 + i];
        for (int j = rows; j < MT_EVAL_CHUNK; ++j) in[i * MT_EVAL_CHUNK + j] = 0.0f;
      }
      forward_t<0>(W, b, r, hT);
      float* o = out + (r * N + s) * OUTL;
      for (int j = 0; j < rows; ++j)
        for (int k = 0; k < OUTL; ++k) o[j * OUTL + k] = z[k * MT_EVAL_CHUNK + j];
    }
  }
  std::free(mem);
  return 0;
}

}  // namespace mt

#ifdef MT_PROFILE  // per phase of the lanes layout's step: the least time of any step
#include <x86intrin.h>
namespace mt {
inline unsigned long long prof[64];
}
#define PROF_BEGIN unsigned long long prof_t = __rdtsc();
#define PROF(i)                                                                   \
  {                                                                               \
    const unsigned long long now = __rdtsc();                                     \
    if (!mt::prof[i] || now - prof_t < mt::prof[i]) mt::prof[i] = now - prof_t;   \
    prof_t = now;                                                                 \
  }
#define PROF_RESET prof_t = __rdtsc();
#else
#define PROF_BEGIN
#define PROF(i)
#define PROF_RESET
#endif

namespace mt {
namespace lanes {

// One group's buffers (see mlp_lanes.hpp) for batches of up to `rows` rows.
struct Group {
  vf* W[NL];
  vf* b[NL];
  vf* gW[NL];
  vf* gb[NL];
  vf* h[NL];
  vf* g[NL];
  vf* d[NL];  // TANH_REPORT layers: 2 sech(pre-activation), what their backward multiplies by
  vf* x;
  vf* y;
  void* mem;
};

static bool group_alloc(Group& G, int rows) {
  constexpr int IN0 = in_of(0), OUTL = out_of(NL - 1);
  size_t total = size_t(rows) * (IN0 + OUTL);  // in vectors
  for (int l = 0; l < NL; ++l) {
    const size_t I = in_of(l), O = out_of(l);
    total += 2 * O * I + 2 * O + 2 * size_t(rows) * O;
    if (ACTS[l] == TANH_REPORT) total += size_t(rows) * O;
  }
  const size_t bytes = (total * sizeof(vf) + 63) / 64 * 64;
  G.mem = std::aligned_alloc(64, bytes);
  if (!G.mem) return false;
  std::memset(G.mem, 0, bytes);
  vf* p = static_cast<vf*>(G.mem);
  for (int l = 0; l < NL; ++l) {
    const int I = in_of(l), O = out_of(l);
    G.W[l] = p; p += O * I;
    G.gW[l] = p; p += O * I;
    G.b[l] = p; p += O;
    G.gb[l] = p; p += O;
    G.h[l] = p; p += size_t(rows) * O;
    G.g[l] = p; p += size_t(rows) * O;
    G.d[l] = nullptr;
    if (ACTS[l] == TANH_REPORT) { G.d[l] = p; p += size_t(rows) * O; }
  }
  G.x = p; p += size_t(rows) * IN0;
  G.y = p;
  return true;
}

// Lane k = replicas r0 + k < r0 + nl of the model's [R, out, in] weights and [R, out] biases;
// the lanes beyond nl get zeros.
static void group_load(Group& G, float* const* W, float* const* b, long r0, int nl) {
  for (int l = 0; l < NL; ++l) {
    const int n = in_of(l) * out_of(l), O = out_of(l);
    float* w = reinterpret_cast<float*>(G.W[l]);
    float* bias = reinterpret_cast<float*>(G.b[l]);
    for (int k = 0; k < V; ++k) {
      const float* src = W[l] + (r0 + k) * n;
      const float* bsrc = b[l] + (r0 + k) * O;
      for (int j = 0; j < n; ++j) w[j * V + k] = k < nl ? src[j] : 0.0f;
      for (int j = 0; j < O; ++j) bias[j * V + k] = k < nl ? bsrc[j] : 0.0f;
    }
  }
}

// The group's parameters and last gradients back to the model's tensors (lanes < nl).
static void group_store(const Group& G, float* const* W, float* const* b, float* const* gW,
                        float* const* gb, long r0, int nl) {
  for (int l = 0; l < NL; ++l) {
    const int n = in_of(l) * out_of(l), O = out_of(l);
    const float* w = reinterpret_cast<const float*>(G.W[l]);
    const float* gw = reinterpret_cast<const float*>(G.gW[l]);
    const float* bias = reinterpret_cast<const float*>(G.b[l]);
    const float* gbias = reinterpret_cast<const float*>(G.gb[l]);
    for (int k = 0; k < nl; ++k) {
      const long r = r0 + k;
      for (int j = 0; j < n; ++j) {
        W[l][r * n + j] = w[j * V + k];
        gW[l][r * n + j] = gw[j * V + k];
      }
      for (int j = 0; j < O; ++j) {
        b[l][r * O + j] = bias[j * V + k];
        gb[l][r * O + j] = gbias[j * V + k];
      }
    }
  }
}

// The batch's rows [s, s + rows) of each replica, through `order` if given, into x and y.
static void gather(Group& G, int rows, long s, long N, long M, const float* x, const float* y,
                   const int64_t* order, long r0, int nl) {
  constexpr int IN0 = in_of(0), OUTL = out_of(NL - 1);
  float* X = reinterpret_cast<float*>(G.x);
  float* Y = reinterpret_cast<float*>(G.y);
  for (int k = 0; k < V; ++k) {
    const long r = r0 + k;
    for (int i = 0; i < rows; ++i) {
      const long row = k >= nl ? 0 : (order ? order[r * M + s + i] : s + i);
      const float* xs = x + (r * N + row) * IN0;
      const float* ys = y + (r * N + row) * OUTL;
      for (int j = 0; j < IN0; ++j) X[(i * IN0 + j) * V + k] = k < nl ? xs[j] : 0.0f;
      for (int j = 0; j < OUTL; ++j) Y[(i * OUTL + j) * V + k] = k < nl ? ys[j] : 0.0f;
    }
  }
}

// h[l] = act(A . W^T + b) for layers l..NL-1; layer 0 reads x.
template <int l>
static MT_INLINE void forward(Group& G, int rows) {
  constexpr int I = in_of(l), O = out_of(l), ACT = ACTS[l];
  const vf* A = l == 0 ? G.x : G.h[l == 0 ? 0 : l - 1];
  const vf* bias = G.b[l];
  vf* h = G.h[l];
  vf* d = G.d[l];
  PROF_BEGIN
  eprod<O>(
      rows, I, A, I, 1, G.W[l], 1, I, [bias](int, int n) { return bias[n]; },
      [h](int m, int n, vf v) { h[m * O + n] = v; });
  // The activation, a pass of its own over the layer's (L1-resident) output: one copy of its
  // code instead of one per block shape.
  if constexpr (ACT == TANH_REPORT) {
    for (int j = 0; j < rows * O; ++j) h[j] = tanh_report(h[j], d[j]);
  } else if constexpr (ACT != NONE) {
    for (int j = 0; j < rows * O; ++j) h[j] = activate<ACT>(h[j]);
  }
  PROF(l)
  if constexpr (l + 1 < NL) forward<l + 1>(G, rows);
}

// g[NL-1] = dLoss/dOutput for the mean loss over the batch's rows x outputs; adds that loss to
// loss[k] for each lane when `loss` is given.
static MT_INLINE void loss_grad(Group& G, int rows, double* loss) {
  constexpr int O = out_of(NL - 1);
  const vf* z = G.h[NL - 1];
  const vf* y = G.y;
  vf* g = G.g[NL - 1];
  const float count = float(rows) * float(O);
  const float c = (LOSS == MSE ? 2.0f : 1.0f) / count;
  double sum[V] = {};
  for (int j = 0; j < rows * O; ++j) {
    const vf d = z[j] - y[j];
    if constexpr (LOSS == MSE) {
      g[j] = c * d;
    } else {
      g[j] = d > 0.0f ? splat(c) : (d < 0.0f ? splat(-c) : d * c);  // sign; keeps 0 and NaN
    }
    if (loss) {
      for (int k = 0; k < V; ++k) {
        const double dk = d[k];
        sum[k] += LOSS == MSE ? dk * dk : (dk < 0.0 ? -dk : dk);
      }
    }
  }
  if (loss)
    for (int k = 0; k < V; ++k) loss[k] += sum[k] / double(count);
}

// Gradients of layers l..0 from g[l] and the SGD update of their parameters; each layer's
// input gradient is taken before its weights change. The gradients are kept (gW, gb) only
// on the epoch's last step, which is what the model's gradient tensors receive.
template <int l>
static MT_INLINE void backward(Group& G, int rows, vf lr, bool keep) {
  constexpr int I = in_of(l), O = out_of(l);
  const vf* g = G.g[l];
  vf* W = G.W[l];
  PROF_BEGIN
  if constexpr (l > 0) {
    // g[l-1][r][i] = (sum_o g[l][r][o] W[o][i]) * f'(z[l-1][r][i])
    constexpr int PACT = ACTS[l - 1];
    const vf* saved = PACT == TANH_REPORT ? G.d[l - 1] : G.h[l - 1];
    vf* gp = G.g[l - 1];
    eprod<I>(
        rows, O, g, O, 1, W, I, 1, [](int, int) { return vf{}; },
        [saved, gp](int m, int n, vf v) { gp[m * I + n] = v * dact<PACT>(saved[m * I + n]); });
    PROF(10 + l)
  }
  // gW[o][i] = sum over rows of g[r][o] h[r][i]; W -= lr gW
  const vf* A = l == 0 ? G.x : G.h[l == 0 ? 0 : l - 1];
  vf* gW = G.gW[l];
  eprod<I, (O < 5 ? O : 5)>(
      O, rows, g, 1, O, A, I, 1, [](int, int) { return vf{}; },
      [W, gW, lr, keep](int m, int n, vf v) {
        if (keep) gW[m * I + n] = v;
        W[m * I + n] = fnmadd(lr, v, W[m * I + n]);
      });
  vf* bias = G.b[l];
  for (int o = 0; o < O; ++o) {
    vf s{};
    for (int r = 0; r < rows; ++r) s += g[r * O + o];
    if (keep) G.gb[l][o] = s;
    bias[o] = fnmadd(lr, s, bias[o]);
  }
  PROF(20 + l)
  if constexpr (l > 0) backward<l - 1>(G, rows, lr, keep);
}

// An epoch of SGD for replicas [r0, r0 + nl) (nl <= V) in one group, as train_range.
static void train_group(Group& G, long r0, int nl, long N, long M, int batch, const float* x,
                        const float* y, const int64_t* order, float* const* W, float* const* b,
                        float* const* gW, float* const* gb, const float* lr,
                        double* loss_out) {
  group_load(G, W, b, r0, nl);
  vf rate{};
  for (int k = 0; k < nl; ++k) rate[k] = lr[r0 + k];
  double loss[V] = {};
  for (long s = 0; s < M; s += batch) {
    const int rows = int(M - s < batch ? M - s : batch);
    PROF_BEGIN
    gather(G, rows, s, N, M, x, y, order, r0, nl);
    PROF(30)
    forward<0>(G, rows);
    PROF_RESET
    loss_grad(G, rows, loss_out ? loss : nullptr);
    PROF(31)
    backward<NL - 1>(G, rows, rate, s + rows >= M);
  }
  group_store(G, W, b, gW, gb, r0, nl);
  if (loss_out)
    for (int k = 0; k < nl; ++k) loss_out[r0 + k] += loss[k];
}

}  // namespace lanes

// How mt_train shares the replicas between the layouts: groups of V replicas in lanes, and a
// remainder of fewer than MT_LANES_MIN replicas (R % V) in rows, where a replica costs about
// 1 / MT_GROUP_COST of a whole group (measured on the report's model: ~12k cycles per
// replica-step in rows, ~69k per group-step in lanes). The split depends on R alone, and the
// layouts give the same bits anyway; MT_GROUP_COST only balances the threads' shares.
#ifndef MT_LANES_MIN
#define MT_LANES_MIN 6
#endif
#ifndef MT_GROUP_COST
#define MT_GROUP_COST 6
#endif

enum { LAYOUT_AUTO = 0, LAYOUT_ROWS = 1, LAYOUT_LANES = 2 };

// mt_train's work: lanes groups [g0, g1) (group j: replicas [j V, min(R, (j + 1) V))), then
// rows-layout replicas [s0, s1).
static int train_units(long g0, long g1, long s0, long s1, long R, long N, long M, int batch,
                       const float* x, const float* y, const int64_t* order, float* const* W,
                       float* const* b, float* const* gW, float* const* gb, const float* lr,
                       double* loss_out) {
  if (g1 > g0) {
    lanes::Group G;
    if (!lanes::group_alloc(G, batch)) return 1;
    for (long j = g0; j < g1; ++j) {
      const long r0 = j * V;
      const int nl = int(R - r0 < V ? R - r0 : V);
      lanes::train_group(G, r0, nl, N, M, batch, x, y, order, W, b, gW, gb, lr, loss_out);
    }
    std::free(G.mem);
  }
  if (s1 > s0) return train_range(s0, s1, N, M, batch, x, y, order, W, b, gW, gb, lr, loss_out);
  return 0;
}

}  // namespace mt

extern "C" {

int mt_layers(void) { return NL; }

// The replicas a lanes group trains at once (floats per vector).
int mt_lanes(void) { return mt::V; }

// What the library was compiled for: 1 AVX, 2 AVX2, 4 FMA, 8 AVX-512F, 16 AVX-512VL.
int mt_isa(void) {
  int bits = 0;
#if defined(__AVX__)
  bits |= 1;
#endif
#if defined(__AVX2__)
  bits |= 2;
#endif
#if defined(__FMA__)
  bits |= 4;
#endif
#if defined(__AVX512F__)
  bits |= 8;
#endif
#if defined(__AVX512VL__)
  bits |= 16;
#endif
  return bits;
}

// SGD over M rows of each replica, in batches of `batch` rows (the last may be smaller).
// x: [R][N][in], y: [R][N][out]; order: [R][M] row indices into each replica's N rows, or null
// for rows 0..M-1 in turn (then M <= N); W, b, gW, gb: one [R, out, in] / [R, out] tensor per
// layer; lr: [R]; loss_out: [R] or null, each replica's batch losses are added to it; the
// work is split over `threads` threads. layout: 0 (auto: groups of V replicas in lanes, a
// remainder of fewer than MT_LANES_MIN in rows), 1 (all in rows), 2 (all in lanes, the last
// group padded); every layout gives the same bits.
// Returns 0, 1 (out of memory), 2 (bad sizes) or 3 (an index in `order` outside [0, N)).
int mt_train(long R, long N, long M, int batch, const float* x, const float* y,
             const int64_t* order, float* const* W, float* const* b, float* const* gW,
             float* const* gb, const float* lr, double* loss_out, int threads, int layout) {
  if (batch < 1 || N < 1 || M < 1 || (!order && M > N) || layout < 0 || layout > 2) return 2;
  if (order) {  // checked before anything changes
    for (long k = 0; k < R * M; ++k)
      if (order[k] < 0 || order[k] >= N) return 3;
  }
  using namespace mt;
  long groups = layout == LAYOUT_ROWS ? 0 : R / V;
  const long rem = R - groups * V;
  if (layout != LAYOUT_ROWS && rem > 0 && (layout == LAYOUT_LANES || rem >= MT_LANES_MIN))
    ++groups;
  const long first_single = groups * V < R ? groups * V : R;
  // Units: the groups, then the single replicas; thread t takes those whose cost falls in
  // its share [t, t + 1) * total / T.
  const long units = groups + (R - first_single);
  const long T = threads < 1 ? 1 : (threads > units ? (units > 0 ? units : 1) : threads);
  const long total = groups * MT_GROUP_COST + (R - first_single);
  auto unit_at = [=](long t) {  // first unit of thread t
    if (t >= T) return units;
    const long target = total * t / T;  // cost before it
    const long g = (target + MT_GROUP_COST - 1) / MT_GROUP_COST;
    if (g < groups) return g;
    const long single = target - groups * MT_GROUP_COST;
    return groups + (single > 0 ? single : 0);
  };
  return over_replicas(T, int(T), [=](long t0, long t1) {
    const long u0 = unit_at(t0), u1 = unit_at(t1);
    const long g0 = u0 < groups ? u0 : groups, g1 = u1 < groups ? u1 : groups;
    const long s0 = first_single + (u0 - g0), s1 = first_single + (u1 - g1);
    return train_units(g0, g1, s0, s1, R, N, M, batch, x, y, order, W, b, gW, gb, lr,
                       loss_out);
  });
}

// bad[r] = 1 if a weight or bias of replica r is inf or NaN, else 0 (by the exponent bits: the
// same under any floating-point flags). W, b: one [R, out, in] / [R, out] tensor per layer.
void mt_nonfinite(long R, float* const* W, float* const* b, unsigned char* bad) {
  for (long r = 0; r < R; ++r) {
    unsigned int all = 0;  // 1 once a value has every exponent bit set: inf or NaN
    auto scan = [&all](const float* v, long n) {
      for (long k = 0; k < n; ++k) {
        unsigned int bits;
        std::memcpy(&bits, v + k, sizeof bits);
        all |= (bits & 0x7f800000u) == 0x7f800000u;
      }
    };
    for (int l = 0; l < NL; ++l) {
      const long out = SIZES[l + 1], n = out * SIZES[l];
      scan(W[l] + r * n, n);
      scan(b[l] + r * out, out);
    }
    bad[r] = (unsigned char)all;
  }
}

// out[R][N][out] = the model's output for x[R][N][in] (see forward_t), on `threads` threads.
int mt_forward(long R, long N, const float* x, float* const* W, float* const* b, float* out,
               int threads) {
  return mt::over_replicas(R, threads, [=](long r0, long r1) {
    return mt::forward_range(r0, r1, N, x, W, b, out);
  });
}

}  // extern "C"
