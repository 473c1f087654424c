// Training with the replicas across the vector lanes ("lanes" layout): V replicas at once, lane
// k of every vector belonging to replica r0 + k. Every lane runs the same arithmetic on its own
// model, so no lane is padding whatever the layer widths and the batch size are (25 wide
// layers cost 25 multiply-adds a row, not 32; the 2 wide first and last layers cost 2), and
// the three products of a layer are element-wise register-blocked loops with no broadcasts.
//
// Each lane computes exactly what the rows layout (mlp.hpp's gemm) computes for its replica, in
// the same order: the same FMA chains (forward from the bias, over the inputs in order; the
// gradients from zero, over the batch rows or the outputs in order), the same activation code
// and the same update, so the two layouts give bitwise-equal results, whichever replicas share
// a group and whatever the vector width (tested). A replica's lane never mixes with another's:
// a NaN stays in its lane.
//
// Layout of a group's buffers, in vectors (one float per replica):
//   W[l]  [out][in]   weights as the model stores them (all three products read them in place)
//   b[l]  [out]       biases;  gW[l], gb[l]: the last step's gradients (written on that step)
//   h[l]  [B][out]    layer l's output after its activation (the last: the model's output)
//   g[l]  [B][out]    gradient of the loss wrt layer l's pre-activation
//   d[l]  [B][out]    TANH_REPORT layers only: 2 sech(pre-activation), saved by the forward
//   x, y  [B][in], [B][out]  the batch, gathered from each replica's rows
#pragma once

#include "mlp.hpp"

#define MT_INLINE inline __attribute__((always_inline))

namespace mt {
namespace lanes {

#ifndef MT_KUNROLL
#define MT_KUNROLL 2
#endif
constexpr int KUNROLL = MT_KUNROLL;  // the sums' loops unrolled this much, not fully (code size)

#if defined(__AVX512VL__)
constexpr int NREG = 32;  // vector registers
#else
constexpr int NREG = 16;
#endif

// C[m][n] = epi(init(m, n) + sum_k A[m][k] * B[k][n]) for an MB x NB block whose first element
// is (m0, n0); A[m][k] is A[m * ams + k * aks], B[k][n] is B[k * bks + n * bns] (A and B point
// at the block's first row and column). The sum runs over k in order, one FMA per term.
template <int MB, int NB, class Init, class Epi>
static MT_INLINE void eblock(int K, const vf* __restrict A, long ams, long aks,
                             const vf* __restrict B, long bks, long bns, int m0, int n0,
                             const Init& init, const Epi& epi) {
  vf acc[MB][NB];
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 16
    for (int n = 0; n < NB; ++n) acc[m][n] = init(m0 + m, n0 + n);
#pragma GCC unroll KUNROLL
  for (int k = 0; k < K; ++k) {
    vf b[NB];
#pragma GCC unroll 16
    for (int n = 0; n < NB; ++n) b[n] = B[k * bks + n * bns];
#pragma GCC unroll 16
    for (int m = 0; m < MB; ++m) {
      vf a = A[m * ams + k * aks];
      // One load into a register, used by NB FMAs: left alone, GCC folds the load into each
      // FMA (NB loads), and the loop runs out of load slots before FMA slots.
      if constexpr (NB > 1) pin(a);
#pragma GCC unroll 16
      for (int n = 0; n < NB; ++n) acc[m][n] = fmadd(a, b[n], acc[m][n]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MB; ++m)
#pragma GCC unroll 16
    for (int n = 0; n < NB; ++n) epi(m0 + m, n0 + n, acc[m][n]);
}

// Block shapes. MB rows x NB columns take MB NB accumulators, NB column vectors and one row
// vector: NB = nb_for(MB, width) is the widest that fits the registers (at most `width`).
constexpr int nb_for(int mb, int width) {
  const int nb = (NREG - 1) / (mb + 1);
  return nb < 1 ? 1 : (nb > width ? width : nb);
}
// Rows of the blocks of a narrow column panel (the columns left over by the main blocks):
// enough accumulators to hide the FMA latency, a multiple of 5 (as the main blocks' rows).
constexpr int mb_for(int nb) { return (NREG - 1 - nb) / nb >= 10 ? 10 : 5; }

// Rows [m0, m0 + MB) x all N columns: blocks of NB columns, then one of the rest.
template <int MB, int NB, int N, class Init, class Epi>
static MT_INLINE void row_blocks(int m0, int K, const vf* A, long ams, long aks, const vf* B,
                                 long bks, long bns, const Init& init, const Epi& epi) {
  constexpr int NF = N / NB * NB;
  for (int n = 0; n < NF; n += NB)
    eblock<MB, NB>(K, A + m0 * ams, ams, aks, B + n * bns, bks, bns, m0, n, init, epi);
  if constexpr (NF < N)
    eblock<MB, N - NF>(K, A + m0 * ams, ams, aks, B + NF * bns, bks, bns, m0, NF, init, epi);
}

// C[M][N] = epi(init + A . B) for a compile-time width N and any M (see eblock), by blocks of
// MB x NB (NB as many as the registers allow), the columns left over (N % NB) by blocks of
// mb_for(N % NB) x (N % NB), and the rows left over (M % MB) one by one.
template <int N, int MB = 5, class Init, class Epi>
static inline void eprod(int M, int K, const vf* A, long ams, long aks, const vf* B, long bks,
                         long bns, const Init& init, const Epi& epi) {
  constexpr int NB = nb_for(MB, N), NF = N / NB * NB, REM = N - NF;
  const int MF = M / MB * MB;
  for (int m = 0; m < MF; m += MB)
    for (int n = 0; n < NF; n += NB)
      eblock<MB, NB>(K, A + m * ams, ams, aks, B + n * bns, bks, bns, m, n, init, epi);
  if constexpr (REM > 0) {  // the last columns, in taller blocks
    constexpr int MR = mb_for(REM) > MB ? mb_for(REM) : MB;
    int m = 0;
    for (; m + MR <= MF; m += MR)
      eblock<MR, REM>(K, A + m * ams, ams, aks, B + NF * bns, bks, bns, m, NF, init, epi);
    for (; m < MF; m += MB)
      eblock<MB, REM>(K, A + m * ams, ams, aks, B + NF * bns, bks, bns, m, NF, init, epi);
  }
  // The last rows (fewer than MB), one at a time: 1 x nb_for(1, N) blocks still have enough
  // accumulators to hide most of the FMA latency.
  for (int m = MF; m < M; ++m)
    row_blocks<1, nb_for(1, N), N>(m, K, A, ams, aks, B, bks, bns, init, epi);
}

}  // namespace lanes
}  // namespace mt
