// One MLP architecture on the kernels of mlp.hpp: forward, loss gradient, backward, SGD update,
// and the two entry points minitorch/native.py calls through ctypes. The including file
// defines NL, SIZES[NL + 1], ACTS[NL] and LOSS first (see mlp.hpp).
#pragma once

#include <thread>
#include <vector>

#include "mlp.hpp"

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
  for (int k = 0; k < I * NVO; ++k) wt[k] = wt[k] - lr * gwt[k];
  for (int c = 0; c < NVO; ++c) n.bias[l][c] = n.bias[l][c] - lr * n.gb[l][c];
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

// mt_train's work for replicas [r0, r1).
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

extern "C" {

int mt_layers(void) { return NL; }

// SGD over M rows of each replica, in batches of `batch` rows (the last may be smaller).
// x: [R][N][in], y: [R][N][out]; order: [R][M] row indices into each replica's N rows, or null
// for rows 0..M-1 in turn (then M <= N); W, b, gW, gb: one [R, out, in] / [R, out] tensor per
// layer; lr: [R]; loss_out: [R] or null, each replica's batch losses are added to it; the
// replicas are split over `threads` threads.
// Returns 0, 1 (out of memory), 2 (bad sizes) or 3 (an index in `order` outside [0, N)).
int mt_train(long R, long N, long M, int batch, const float* x, const float* y,
             const int64_t* order, float* const* W, float* const* b, float* const* gW,
             float* const* gb, const float* lr, double* loss_out, int threads) {
  if (batch < 1 || N < 1 || M < 1 || (!order && M > N)) return 2;
  if (order) {  // checked before anything changes
    for (long k = 0; k < R * M; ++k)
      if (order[k] < 0 || order[k] >= N) return 3;
  }
  return mt::over_replicas(R, threads, [=](long r0, long r1) {
    return mt::train_range(r0, r1, N, M, batch, x, y, order, W, b, gW, gb, lr, loss_out);
  });
}

// out[R][N][out] = the model's output for x[R][N][in] (see forward_t), on `threads` threads.
int mt_forward(long R, long N, const float* x, float* const* W, float* const* b, float* out,
               int threads) {
  return mt::over_replicas(R, threads, [=](long r0, long r1) {
    return mt::forward_range(r0, r1, N, x, W, b, out);
  });
}

}  // extern "C"
