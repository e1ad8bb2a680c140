// The native step's inner loop alone, without XLA: ns per element of Member::row_range on
// one (rows, cols) tensor per thread (f32 params and gradients, bf16 accumulators), median and
// minimum over passes. Each thread steps a tensor of its own, so one tensor that fits in L2
// measures the loop's compute bound and a large one adds memory. For trying kernel changes:
//
//   g++ -O3 -march=native -mprefer-vector-width=512 -fno-math-errno -std=c++17 \
//     -Wno-return-type -DLOPT_NM=3 -DLOPT_NA=3 -DLOPT_HIDDEN=4 \
//     -I$(.venv/bin/python -c "import jax; print(jax.ffi.include_dir())") \
//     benchmarks/native_kernel_harness.cc -o /tmp/harness -lpthread
//   /tmp/harness PASSES ROWS COLS THREADS        e.g. 200 64 1024 1 (in L2), 40 2048 1024 2
//
// The sizes are mlp_small's (learned_opt/registry.py). The machine is shared and noisy: compare
// variants run in turn, by their minimum.

#include "../learned_opt/native_kernel.cc"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

using Acc = bf16;

static void one_thread(int passes, int64_t rows, int64_t cols, int id, std::mutex* print) {
  const int64_t rc = rows * cols;
  std::vector<float> p(rc), g(rc), upd(rc);
  std::vector<Acc> m(NM * rc), v(rc);
  for (int64_t i = 0; i < rc; ++i) {
    p[i] = std::sin(i * 0.001f);
    g[i] = std::cos(i * 0.0037f) * 1e-2f;
  }
  for (auto& x : m) x.bits = 0x3c00;  // bf16 0.0078
  for (auto& x : v) x.bits = 0x3800;  // bf16 3.1e-5
  std::vector<float> rowb(O * rows, 0.1f), colb(O * cols, 0.05f), srow(NA * rows, 1.0f), scol(NA * cols, 1.0f);
  Member<float, float, Acc> mb;
  mb.p = p.data();
  mb.g = g.data();
  mb.m = m.data();
  mb.v = v.data();
  mb.upd = upd.data();
  for (int i = 0; i < E * O; ++i) mb.w0[i] = 0.01f * (i % 7 - 3);
  mb.rowb = rowb.data();
  mb.colb = colb.data();
  mb.srow = srow.data();
  mb.scol = scol.data();
  for (int i = 0; i < NREST; ++i) mb.rest[i] = 0.1f * (i % 5 - 2);
  for (int i = 0; i < NSCAL; ++i) mb.scal[i] = 0.5f;
  mb.scal[2 * NM + 3] = 0.001f;  // exp_mult
  mb.scal[2 * NM + 4] = 0.001f;  // output scale
  mb.rows = rows;
  mb.cols = cols;
  std::vector<double> ns;
  for (int it = 0; it < passes; ++it) {
    auto t0 = std::chrono::steady_clock::now();
    if (cols >= ROW_MIN_COLS)
      mb.row_range(0, rows);
    else
      mb.flat_range(0, rc);
    ns.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / rc);
  }
  std::sort(ns.begin(), ns.end());
  std::lock_guard<std::mutex> lock(*print);
  std::printf("thread %d  %ld x %ld: median %.3f ns/element, min %.3f\n", id, long(rows), long(cols), ns[ns.size() / 2],
              ns[0]);
}

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s PASSES ROWS COLS THREADS\n", argv[0]);
    return 2;
  }
  const int passes = std::atoi(argv[1]), threads = std::atoi(argv[4]);
  const int64_t rows = std::atoll(argv[2]), cols = std::atoll(argv[3]);
  if (passes < 1 || rows < 1 || cols < 1 || threads < 1) {
    std::fprintf(stderr, "PASSES, ROWS, COLS and THREADS must be positive integers\n");
    return 2;
  }
  std::mutex print;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(one_thread, passes, rows, cols, t, &print);
  for (auto& t : pool) t.join();
}
