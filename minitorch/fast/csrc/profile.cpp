// Where the training kernel's cycles go, outside Python: the report's model (2-25-25-25-2,
// tanh, MSE, batch 25, 1000 rows a replica) on R replicas, one thread. Prints the time per
// replica-step of each layout (the least of several epochs, in TSC ticks) and, for the lanes
// layout, the least time of each phase of a group's step. Not part of the build of the kernels.
//
//   g++ -O3 -march=native -std=c++17 -fno-math-errno -pthread -DMT_PROFILE \
//       minitorch/fast/csrc/profile.cpp -o /tmp/mt_profile && /tmp/mt_profile [R] [batch] [epochs]
//
// TSC ticks are not core cycles (the TSC runs at the base clock); compare the phases with each
// other and with an sgemm measured the same way, not with a nominal peak.
#ifndef MT_ACT
#define MT_ACT 1  // TANH
#endif
constexpr int NL = 4;
constexpr int SIZES[NL + 1] = {2, 25, 25, 25, 2};
constexpr int ACTS[NL] = {MT_ACT, MT_ACT, MT_ACT, 0};
constexpr int LOSS = 0;
#include "mlp_net.hpp"

#include <x86intrin.h>

#include <algorithm>
#include <cstdio>
#include <random>

namespace {

struct Params {
  std::vector<std::vector<float>> t[4];  // W, b, gW, gb
  std::vector<float*> p[4];
  Params(long R) {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-0.3f, 0.3f);
    for (int l = 0; l < NL; ++l) {
      const long n[4] = {R * SIZES[l] * SIZES[l + 1], R * SIZES[l + 1], R * SIZES[l] * SIZES[l + 1],
                         R * SIZES[l + 1]};
      for (int k = 0; k < 4; ++k) {
        t[k].emplace_back(n[k]);
        if (k < 2)
          for (auto& v : t[k].back()) v = u(rng);
      }
    }
    for (int k = 0; k < 4; ++k)
      for (auto& v : t[k]) p[k].push_back(v.data());
  }
};

}  // namespace

int main(int argc, char** argv) {
  const long R = argc > 1 ? atol(argv[1]) : 16, N = 1000;
  const int batch = argc > 2 ? atoi(argv[2]) : 25, epochs = argc > 3 ? atoi(argv[3]) : 20;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> x(R * N * SIZES[0]), y(R * N * SIZES[NL]), lr(R, 0.01f);
  for (auto& v : x) v = u(rng);
  for (auto& v : y) v = u(rng);
  std::vector<int64_t> order(R * N);
  for (long r = 0; r < R; ++r) {
    for (long i = 0; i < N; ++i) order[r * N + i] = i;
    std::shuffle(order.begin() + r * N, order.begin() + (r + 1) * N, rng);
  }
  const double steps = double(R) * ((N + batch - 1) / batch);
  const double flop = 6.0 * 1350 * N * R;  // forward, weight and input gradients
  const char* names[] = {"rows", "lanes"};
  double best[2] = {1e30, 1e30};
  Params P(R);
  for (int e = 0; e < epochs; ++e)
    for (int layout = 1; layout <= 2; ++layout) {  // interleaved: drifts hit both alike
      const unsigned long long t = __rdtsc();
      mt_train(R, N, N, batch, x.data(), y.data(), order.data(), P.p[0].data(), P.p[1].data(),
               P.p[2].data(), P.p[3].data(), lr.data(), nullptr, 1, layout);
      best[layout - 1] = std::min(best[layout - 1], double(__rdtsc() - t));
    }
  for (int k = 0; k < 2; ++k)
    printf("%-6s %8.0f ticks per replica-step, %5.1f flop per tick\n", names[k],
           best[k] / steps, flop / best[k]);
#ifdef MT_PROFILE
  const char* phase[64] = {};
  const char* fwd[] = {"forward 0", "forward 1", "forward 2", "forward 3"};
  const char* ing[] = {"", "input grad 1", "input grad 2", "input grad 3"};
  const char* wgr[] = {"weight grad 0", "weight grad 1", "weight grad 2", "weight grad 3"};
  for (int l = 0; l < NL && l < 4; ++l) {
    phase[l] = fwd[l];
    if (l > 0) phase[10 + l] = ing[l];
    phase[20 + l] = wgr[l];
  }
  phase[30] = "gather batch";
  phase[31] = "loss gradient";
  unsigned long long total = 0;
  for (auto v : mt::prof) total += v;
  printf("lanes, least time of each phase of a group's step (%d replicas), ticks:\n", mt::V);
  for (int i = 0; i < 64; ++i)
    if (mt::prof[i])
      printf("  %-14s %7llu  %5.1f%%\n", phase[i] ? phase[i] : "?", mt::prof[i],
             100.0 * mt::prof[i] / total);
  printf("  %-14s %7llu  (%.0f per replica-step)\n", "sum", total, double(total) / mt::V);
#endif
}
