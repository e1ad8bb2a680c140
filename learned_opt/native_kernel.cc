// MLPLOpt's per-parameter step as one native CPU loop (an XLA FFI custom call).
//
// For every element of one tensor (on its (R, C) view) this reads the parameter, the gradient
// and the elementwise accumulators once, and writes the new accumulators and the update once:
// accumulator EMAs, features, the small MLP and the output scaling stay in registers (and the
// first layer's few outputs in L1), 16 elements at a time. XLA:CPU cannot do this itself: it
// emits two loops (no multi-output fusion) and re-broadcasts every network weight per vector
// (see docs/design_notes.md).
//
// Everything that is per tensor, per row or per column (normalizers folded into the first
// layer, Adafactor's row/column factors, biases) is computed by the caller in JAX
// (learned_opt/native.py) and passed in. Sizes are compile-time macros: the caller compiles
// one library per architecture (LOPT_NM momenta, LOPT_NA Adafactor decays, LOPT_HIDDEN the
// hidden sizes), so every loop below is unrolled by the compiler.
//
// The math is learned_opt.native.kernel_reference's, element for element.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#define LOPT_INLINE inline __attribute__((always_inline))

#if !defined(LOPT_NM) || !defined(LOPT_NA) || !defined(LOPT_HIDDEN)
#error "compile with -DLOPT_NM=... -DLOPT_NA=... -DLOPT_HIDDEN=h1,h2,..."
#endif

namespace {

constexpr int NM = LOPT_NM;
constexpr int NA = LOPT_NA;
constexpr int HID[] = {LOPT_HIDDEN};
constexpr int NL = sizeof(HID) / sizeof(HID[0]);
constexpr int E = 3 + NM + 1 + NM + NA + NM;  // elementwise features
constexpr int O = HID[0] + 1;                 // first layer outputs + the linear skip
constexpr int NSCAL = 2 * NM + 5;             // see Scalars
constexpr int L = 16;                         // lanes per block
// Elements ahead that the step prefetches in each stream. Measured on a 1024 x 1024 tensor
// (2-core Zen 5 VM, bf16 state): 1.5-2.1 ns per element without, 1.06-1.4 with 384-768 ahead.
constexpr int PREFETCH = 512;
constexpr int CHUNK_BLOCKS = 16;  // see Member::row_range_local
// Tensors with at least this many columns are stepped row by row, narrower ones as a flat
// sequence with per-lane gathers of their row and column inputs. A row of n < 16 columns is one
// masked block (~52 ns on one Zen 4 core) where gathering costs ~6.3 ns a lane: even at 9-10.
constexpr int ROW_MIN_COLS = 10;

constexpr int rest_size() {
  int n = 0;
  for (int i = 1; i < NL; ++i) n += HID[i - 1] * HID[i] + HID[i];
  return n + HID[NL - 1] * 2 + 2;
}
constexpr int NREST = rest_size();
constexpr int max_hidden() {
  int n = 0;
  for (int i = 0; i < NL; ++i) n = HID[i] > n ? HID[i] : n;
  return n;
}
constexpr int MAXH = max_hidden();
// Networks up to this width keep their activations in registers; wider ones run each layer
// blocked, BLOCK outputs at a time (Member::first_layer and later_layers).
constexpr int REGISTER_HIDDEN = 8;
constexpr int BLOCK = 16;

constexpr float GRAD_CLIP = 1e12f;
constexpr float RSQRT_EPS = 1e-30f;
constexpr float RATIO_CLIP = 10.0f;  // features.RATIO_CLIP

typedef float vf __attribute__((vector_size(4 * L)));
typedef uint32_t vu __attribute__((vector_size(4 * L)));
typedef int32_t vi __attribute__((vector_size(4 * L)));
typedef uint16_t vh __attribute__((vector_size(2 * L)));

LOPT_INLINE vf splat(float x) { return vf{} + x; }

// NaN-propagating max / min / clip / relu (XLA's max and min propagate NaN; so must we, so that
// a diverged task is still seen as non-finite downstream). AVX-512's max(a, b) is a > b ? a : b
// and min(a, b) a < b ? a : b, one instruction each: with the constant first, a NaN x is kept.
#if defined(__AVX512F__)
LOPT_INLINE vf vmax(float lo, vf x) { return (vf)_mm512_max_ps((__m512)splat(lo), (__m512)x); }
LOPT_INLINE vf vmin(vf x, float hi) { return (vf)_mm512_min_ps((__m512)splat(hi), (__m512)x); }
#else
LOPT_INLINE vf vmax(float lo, vf x) { return x < lo ? splat(lo) : x; }
LOPT_INLINE vf vmin(vf x, float hi) { return x > hi ? splat(hi) : x; }
#endif
LOPT_INLINE vf clip(vf x, float lo, float hi) { return vmin(vmax(lo, x), hi); }
LOPT_INLINE vf relu(vf x) { return vmax(0.0f, x); }

// 1 / sqrt(x). With AVX-512: the 14-bit estimate and one Newton step (within ~2 ulp of
// f32's correctly rounded value, a quarter of the cost of sqrt and divide).
LOPT_INLINE vf rsqrt(vf x) {
#if defined(__AVX512F__)
  vf y = (vf)_mm512_rsqrt14_ps((__m512)x);
  return y * (1.5f - 0.5f * x * y * y);
#else
  vf r;
  for (int l = 0; l < L; ++l) r[l] = 1.0f / std::sqrt(x[l]);
  return r;
#endif
}

// exp to ~2 ulp: exp(x) = 2^n * exp(r), |r| <= ln2 / 2, degree-6 polynomial for exp(r)
// (Cephes' expf). Overflows to inf and underflows to 0 like XLA's.
LOPT_INLINE vf vexp(vf x) {
#if defined(__AVX512F__)
  x = vmin(vmax(-104.0f, x), 100.0f);  // past f32's range either way; keeps r finite
#else
  vf big = x > 88.72f ? splat(INFINITY) : splat(0.0f);
  x = x > 88.0f ? splat(88.0f) : x;
  x = x < -87.3365447504f ? splat(-87.3365447504f) : x;
#endif
  // Round to nearest by the 1.5 * 2^23 trick (|n| < 2^22).
  vf n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf q = splat(1.9875691500e-4f);
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  q = q * r * r + r + 1.0f;
#if defined(__AVX512F__)
  return (vf)_mm512_scalef_ps((__m512)q, (__m512)n);  // q 2^n: inf, or 0, past f32's range
#else
  vf two_n = (vf)((__builtin_convertvector(n, vi) + 127) << 23);
  return q * two_n + big;
#endif
}

// ---- loads and stores of 16 lanes (n < L: a partial block, the rest reads as 0) ----------

struct bf16 {
  uint16_t bits;
};

// FULL blocks load and store one whole vector; a row's last, partial block n lanes (the rest
// read as 0), with masked loads and stores where AVX-512 has them.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define LOPT_MASKED 1
LOPT_INLINE __mmask16 lanes(int n) { return __mmask16((1u << n) - 1); }
#else
#define LOPT_MASKED 0
#endif
template <bool FULL>
LOPT_INLINE vf load(const float* src, int n) {
#if LOPT_MASKED
  if (!FULL) return (vf)_mm512_maskz_loadu_ps(lanes(n), src);
#endif
  vf v = {};
  std::memcpy(&v, src, FULL ? sizeof(v) : sizeof(float) * n);
  return v;
}
template <bool FULL>
LOPT_INLINE vf load(const bf16* src, int n) {
#if LOPT_MASKED
  __m256i h = FULL ? _mm256_loadu_si256((const __m256i*)src) : _mm256_maskz_loadu_epi16(lanes(n), src);
  return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
#else
  vh h = {};
  std::memcpy(&h, src, FULL ? sizeof(h) : sizeof(uint16_t) * n);
  return (vf)(__builtin_convertvector(h, vu) << 16);
#endif
}
template <bool FULL>
LOPT_INLINE void store(float* dst, vf v, int n) {
#if LOPT_MASKED
  if (!FULL) return _mm512_mask_storeu_ps(dst, lanes(n), (__m512)v);
#endif
  std::memcpy(dst, &v, FULL ? sizeof(v) : sizeof(float) * n);
}
// f32 -> bf16, round to nearest even, NaN stays NaN (as XLA's convert).
LOPT_INLINE vh to_bf16_bits(vf v) {
#if defined(__AVX512BF16__)
  return (vh)_mm512_cvtneps_pbh((__m512)v);
#endif
  vu u = (vu)v;
  vu rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  vu nan = ((u >> 16) & 0x8000u) | 0x7FC0u;
  return __builtin_convertvector(v != v ? nan : rounded, vh);
}
template <bool FULL>
LOPT_INLINE void store(bf16* dst, vf v, int n) {
  vh h = to_bf16_bits(v);
#if LOPT_MASKED
  if (!FULL) return _mm256_mask_storeu_epi16(dst, lanes(n), (__m256i)h);
#endif
  std::memcpy(dst, &h, FULL ? sizeof(h) : sizeof(uint16_t) * n);
}
// The value an accumulator has once stored in its dtype (features read the stored value).
LOPT_INLINE vf stored(vf v, const float*) { return v; }
LOPT_INLINE vf stored(vf v, const bf16*) {
#if defined(__AVX512F__)
  return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)to_bf16_bits(v)), 16);
#endif
  return (vf)(__builtin_convertvector(to_bf16_bits(v), vu) << 16);
}

// ---- one tensor (one batch member) -------------------------------------------------------

// Layout of the f32 scalar input: momentum decays d (NM), 1 - d (NM), rms decay, 1 - rms
// decay, the cap of the bare rsqrt(v) feature, exp_mult, and the output scale
// (exp(log_step) * step_mult * mu-P scale).
template <class P, class G, class A>
struct Member {
  const P* p;
  const G* g;
  A* m;      // (NM, R, C), read then overwritten (aliased input and output)
  float* v;  // (R, C), likewise; always f32 (a bf16 EMA of decay 0.999 cannot decay)
  P* upd;
  float w0[E * O];    // (E, O): first layer and skip, normalizers folded in
  const float* rowb;  // (O, R): per-row bias (row features, biases, global features)
  const float* colb;  // (O, C): per-column bias (column features)
  const float* srow;  // (NA, R): Adafactor's scaled rsqrt row factor
  const float* scol;  // (NA, C): Adafactor's rsqrt column factor
  float rest[NREST];  // later layers and the output layer, packed
  float scal[NSCAL];
  int64_t rows, cols;

  // The E features of elements [i, i + n) (per-column factors `fac` gathered by the caller);
  // WRITE: also store the updated accumulators.
  template <bool FULL, bool WRITE>
  LOPT_INLINE void features(int64_t i, int n, const vf* fac, vf* x) const {
    const int64_t rc = rows * cols;
    if (WRITE) {  // software prefetch: the hardware's does not follow all eleven streams
      __builtin_prefetch(p + i + PREFETCH);
      __builtin_prefetch(g + i + PREFETCH);
      for (int k = 0; k < NM; ++k) __builtin_prefetch(m + k * rc + i + PREFETCH, 1);
      __builtin_prefetch(v + i + PREFETCH, 1);
      __builtin_prefetch(upd + i + PREFETCH, 1);
    }
    vf g_ = clip(load<FULL>(g + i, n), -GRAD_CLIP, GRAD_CLIP);
    int e = 0;
    x[e++] = load<FULL>(p + i, n);
    x[e++] = g_;
    x[e++] = clip(g_, -0.1f, 0.1f);
    vf m_[NM];
    for (int k = 0; k < NM; ++k) {
      vf mk = scal[k] * load<FULL>(m + k * rc + i, n) + scal[NM + k] * g_;
      if (WRITE) store<FULL>(m + k * rc + i, mk, n);
      m_[k] = stored(mk, m);
      x[e++] = m_[k];
    }
    vf v_ = scal[2 * NM] * load<FULL>(v + i, n) + scal[2 * NM + 1] * (g_ * g_);
    if (WRITE) store<FULL>(v + i, v_, n);
    vf rv = rsqrt(stored(v_, v) + RSQRT_EPS);
    x[e++] = vmin(rv, scal[2 * NM + 2]);
    for (int k = 0; k < NM; ++k) x[e++] = clip(m_[k] * rv, -RATIO_CLIP, RATIO_CLIP);
    for (int a = 0; a < NA; ++a) x[e++] = clip(g_ * fac[a], -RATIO_CLIP, RATIO_CLIP);
    for (int k = 0; k < NM; ++k) x[e++] = clip(m_[k] * fac[NA - 1], -RATIO_CLIP, RATIO_CLIP);
  }

  // The step for elements [i, i + n) is two halves, so that a row's blocks can run each half
  // in turn (see row_range_local). This first half updates the accumulators and computes the
  // first layer's outputs `pre` from the per-row/column inputs the caller has gathered (pre0,
  // fac). All features first, then the first layer output by output: the E features and the
  // sums fit in registers, where E sums fed feature by feature spill. Two partial sums per
  // output: 2 O independent chains of E / 2 multiply-adds keep both FMA pipes busy. A wide
  // network's O outputs with many features do not fit that way either (mlp's 22 features and 33
  // outputs spilled: 137 ns per element, 49 blocked): BLOCK outputs at a time, feature by feature.
  template <bool FULL>
  LOPT_INLINE void first_layer(int64_t i, int n, const vf* pre0, const vf* fac, vf* pre) const {
    vf x[E];
    features<FULL, true>(i, n, fac, x);
    if constexpr (MAXH <= REGISTER_HIDDEN) {
      for (int o = 0; o < O; ++o) {
        vf s[2] = {pre0[o], vf{}};
        for (int f = 0; f < E; ++f) s[f % 2] += x[f] * w0[f * O + o];
        pre[o] = s[0] + s[1];
      }
    } else {  // wide: BLOCK outputs at a time, feature by feature (as later_layers)
      for (int o0 = 0; o0 < O; o0 += BLOCK) {
        const int nb = std::min(BLOCK, O - o0);
        vf s[BLOCK];
        for (int j = 0; j < nb; ++j) s[j] = pre0[o0 + j];
        for (int f = 0; f < E; ++f) {
          const vf xf = x[f];
          for (int j = 0; j < nb; ++j) s[j] += xf * w0[f * O + o0 + j];
        }
        for (int j = 0; j < nb; ++j) pre[o0 + j] = s[j];
      }
    }
  }

  // The second half: hidden layers, the (direction, log-magnitude) output and the update.
  // Small networks keep every activation in registers. Wider ones (muLO's 32 x 32) cannot:
  // their activations stay in an L1 buffer and each layer runs BLOCK outputs at a time, input
  // by input, so BLOCK independent sums and one loaded activation fill the registers and both
  // FMA pipes (one sum per output, input by input, made a chain per output and spilled: slower
  // than XLA's matmuls, docs/design_notes.md).
  template <bool FULL>
  LOPT_INLINE void later_layers(int64_t i, int n, const vf* pre) const {
    vf h[MAXH], hn[MAXH];
    for (int j = 0; j < HID[0]; ++j) h[j] = relu(pre[j]);
    const float* w = rest;
    int width = HID[0];
    for (int li = 1; li < NL; ++li) {
      const float* b = w + width * HID[li];
      if constexpr (MAXH <= REGISTER_HIDDEN) {
        for (int j = 0; j < HID[li]; ++j) {
          vf s = splat(b[j]);
          for (int q = 0; q < width; ++q) s += h[q] * w[q * HID[li] + j];
          hn[j] = relu(s);
        }
      } else {
        for (int j0 = 0; j0 < HID[li]; j0 += BLOCK) {
          const int nb = std::min(BLOCK, HID[li] - j0);
          vf s[BLOCK];
          for (int j = 0; j < nb; ++j) s[j] = splat(b[j0 + j]);
          for (int q = 0; q < width; ++q) {
            const vf hq = h[q];
            for (int j = 0; j < nb; ++j) s[j] += hq * w[q * HID[li] + j0 + j];
          }
          for (int j = 0; j < nb; ++j) hn[j0 + j] = relu(s[j]);
        }
      }
      for (int j = 0; j < HID[li]; ++j) h[j] = hn[j];
      w = b + HID[li];
      width = HID[li];
    }
    // Four partial sums each: a chain of `width` dependent multiply-adds per output would
    // wait on the FMA latency.
    constexpr int NS = MAXH <= REGISTER_HIDDEN ? 1 : 4;
    vf dir[NS] = {}, lmag[NS] = {};
    dir[0] = splat(w[2 * width]);
    lmag[0] = splat(w[2 * width + 1]);
    for (int q = 0; q < width; ++q) {
      dir[q % NS] += h[q] * w[2 * q];
      lmag[q % NS] += h[q] * w[2 * q + 1];
    }
    for (int k = 1; k < NS; ++k) {
      dir[0] += dir[k];
      lmag[0] += lmag[k];
    }
    vf step = (dir[0] + pre[HID[0]]) * vexp(lmag[0] * scal[2 * NM + 3]) * scal[2 * NM + 4];
    store<FULL>(upd + i, step, n);
  }

  // Rows [r0, r1): 16 columns at a time, the row's biases broadcast.
  // The members are copied to a local first: the kernel's stores (byte copies) could alias
  // *this, which would make the compiler reload every weight after every store.
  void row_range(int64_t r0, int64_t r1) const {
    const Member self = *this;
    self.row_range_local(r0, r1);
  }
  void flat_range(int64_t i0, int64_t i1) const {
    const Member self = *this;
    self.flat_range_local(i0, i1);
  }

  // One block's dependency chain (loads, accumulators, rsqrt, first layer, exp, update) is
  // longer than the core's reorder window holds, so the blocks of a chunk of CHUNK_BLOCKS run
  // the first half each, their outputs kept in a small buffer (L1), then the second half each:
  // within a half, blocks are independent and overlap. Measured (1024-column rows, one Zen 4
  // core, in cache): 7% faster than whole blocks in turn.
  LOPT_INLINE void row_range_local(int64_t r0, int64_t r1) const {
    vf pre0[O], fac[NA], pre[CHUNK_BLOCKS][O];
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t c0 = 0; c0 < cols; c0 += CHUNK_BLOCKS * L) {
        const int64_t c1 = std::min<int64_t>(cols, c0 + CHUNK_BLOCKS * L);
        for (int64_t c = c0, b = 0; c < c1; c += L, ++b) {
          int n = c1 - c < L ? int(c1 - c) : L;
          if (n == L) {
            for (int o = 0; o < O; ++o) pre0[o] = rowb[o * rows + r] + load<true>(colb + o * cols + c, n);
            for (int a = 0; a < NA; ++a) fac[a] = srow[a * rows + r] * load<true>(scol + a * cols + c, n);
            first_layer<true>(r * cols + c, n, pre0, fac, pre[b]);
          } else {
            for (int o = 0; o < O; ++o) pre0[o] = rowb[o * rows + r] + load<false>(colb + o * cols + c, n);
            for (int a = 0; a < NA; ++a) fac[a] = srow[a * rows + r] * load<false>(scol + a * cols + c, n);
            first_layer<false>(r * cols + c, n, pre0, fac, pre[b]);
          }
        }
        for (int64_t c = c0, b = 0; c < c1; c += L, ++b) {
          int n = c1 - c < L ? int(c1 - c) : L;
          if (n == L)
            later_layers<true>(r * cols + c, n, pre[b]);
          else
            later_layers<false>(r * cols + c, n, pre[b]);
        }
      }
    }
  }

  // Flat elements [i0, i1) for narrow tensors (cols < ROW_MIN_COLS): per-lane gathers.
  LOPT_INLINE void flat_range_local(int64_t i0, int64_t i1) const {
    vf pre0[O], fac[NA];
    int64_t r = i0 / cols, c = i0 % cols;  // of element i + l, l = 0 .. n - 1
    for (int64_t i = i0; i < i1; i += L) {
      int n = i1 - i < L ? int(i1 - i) : L;
      for (int o = 0; o < O; ++o) pre0[o] = vf{};
      for (int a = 0; a < NA; ++a) fac[a] = vf{};
      for (int l = 0; l < n; ++l) {
        for (int o = 0; o < O; ++o) pre0[o][l] = rowb[o * rows + r] + colb[o * cols + c];
        for (int a = 0; a < NA; ++a) fac[a][l] = srow[a * rows + r] * scol[a * cols + c];
        if (++c == cols) c = 0, ++r;
      }
      vf pre[O];
      if (n == L) {
        first_layer<true>(i, n, pre0, fac, pre);
        later_layers<true>(i, n, pre);
      } else {
        first_layer<false>(i, n, pre0, fac, pre);
        later_layers<false>(i, n, pre);
      }
    }
  }
};

// Work is split into items of about this many elements; smaller calls run on the caller's
// thread alone. The step's items are smaller: a 100k-parameter tensor is then 13 items, not 4,
// which the two threads share more evenly (784 x 128, 2 threads: 252 -> 223 us a call).
constexpr int64_t ITEM_ELEMENTS = 32768;
constexpr int64_t STEP_ITEM_ELEMENTS = 8192;
// Helpers are woken only for this many elements each (the caller's share included): waking one
// costs about as much as ~10k elements of work, and a meta-training population is many small
// tensors, split over devices that already keep every core busy (issue 18).
constexpr int64_t MIN_THREAD_ELEMENTS = 16384;

// do_item(0 .. items - 1) on XLA's intra-op pool and the caller's thread. Work sharing:
// helpers and the caller take items from one counter; the caller returns once every item is
// done. The shared state outlives the call (a late helper finds no item left).
template <class F>
void parallel_for(ffi::ThreadPool& pool, int64_t items, int64_t elements, F do_item) {
  const int64_t threads = std::min<int64_t>({pool.num_threads(), items - 1, elements / MIN_THREAD_ELEMENTS - 1});
  if (threads <= 0) {
    for (int64_t it = 0; it < items; ++it) do_item(it);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, items, do_item]() {
    for (int64_t it; (it = shared->next.fetch_add(1)) < items;) {
      do_item(it);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 0; t < threads; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  while (shared->done.load(std::memory_order_acquire) < items) std::this_thread::yield();
}

template <class P, class G, class A>
ffi::Error run(ffi::ThreadPool& pool, ffi::AnyBuffer p, ffi::AnyBuffer g, ffi::AnyBuffer m, ffi::AnyBuffer v,
               ffi::AnyBuffer w0, ffi::AnyBuffer rowb, ffi::AnyBuffer colb, ffi::AnyBuffer srow,
               ffi::AnyBuffer scol, ffi::AnyBuffer rest, ffi::AnyBuffer scal, ffi::AnyBuffer upd,
               ffi::AnyBuffer m_out, ffi::AnyBuffer v_out, int64_t rows, int64_t cols) {
  const int64_t rc = rows * cols;
  if (rc <= 0 || p.element_count() % rc != 0) return ffi::Error::InvalidArgument("lopt: bad tensor shape");
  const int64_t batch = p.element_count() / rc;
  auto expect = [&](ffi::AnyBuffer b, int64_t per_member) { return b.element_count() == batch * per_member; };
  if (!expect(g, rc) || !expect(m, NM * rc) || !expect(v, rc) || !expect(w0, E * O) || !expect(rowb, O * rows) ||
      !expect(colb, O * cols) || !expect(srow, NA * rows) || !expect(scol, NA * cols) || !expect(rest, NREST) ||
      !expect(scal, NSCAL))
    return ffi::Error::InvalidArgument("lopt: input sizes do not match the compiled architecture");
  // m and v are aliased to their outputs; copy if XLA did not honour the alias.
  if (m_out.untyped_data() != m.untyped_data())
    std::memcpy(m_out.untyped_data(), m.untyped_data(), m.size_bytes());
  if (v_out.untyped_data() != v.untyped_data())
    std::memcpy(v_out.untyped_data(), v.untyped_data(), v.size_bytes());

  auto member = [&](int64_t b) {
    Member<P, G, A> mb;
    mb.p = static_cast<const P*>(p.untyped_data()) + b * rc;
    mb.g = static_cast<const G*>(g.untyped_data()) + b * rc;
    mb.m = static_cast<A*>(m_out.untyped_data()) + b * NM * rc;
    mb.v = static_cast<float*>(v_out.untyped_data()) + b * rc;
    mb.upd = static_cast<P*>(upd.untyped_data()) + b * rc;
    std::memcpy(mb.w0, static_cast<const float*>(w0.untyped_data()) + b * E * O, sizeof(mb.w0));
    mb.rowb = static_cast<const float*>(rowb.untyped_data()) + b * O * rows;
    mb.colb = static_cast<const float*>(colb.untyped_data()) + b * O * cols;
    mb.srow = static_cast<const float*>(srow.untyped_data()) + b * NA * rows;
    mb.scol = static_cast<const float*>(scol.untyped_data()) + b * NA * cols;
    std::memcpy(mb.rest, static_cast<const float*>(rest.untyped_data()) + b * NREST, sizeof(mb.rest));
    std::memcpy(mb.scal, static_cast<const float*>(scal.untyped_data()) + b * NSCAL, sizeof(mb.scal));
    mb.rows = rows;
    mb.cols = cols;
    return mb;
  };
  const bool by_rows = cols >= ROW_MIN_COLS;
  // Items: (member, range); rows (or flat elements, a multiple of L) per item.
  const int64_t span = by_rows ? std::max<int64_t>(1, STEP_ITEM_ELEMENTS / cols) : STEP_ITEM_ELEMENTS;
  const int64_t extent = by_rows ? rows : rc;
  const int64_t per_member = (extent + span - 1) / span;
  const int64_t items = batch * per_member;
  auto do_item = [=](int64_t it) {
    auto mb = member(it / per_member);
    int64_t lo = (it % per_member) * span, hi = std::min(extent, lo + span);
    if (by_rows)
      mb.row_range(lo, hi);
    else
      mb.flat_range(lo, hi);
  };
  parallel_for(pool, items, batch * rc, do_item);
  return ffi::Error::Success();
}

// f(P*, G*, A*), null pointers naming the C++ types of the params', gradients' and
// accumulators' dtypes (each float32 or bfloat16): one instantiation per combination.
template <class F>
ffi::Error with_dtypes(ffi::DataType p, ffi::DataType g, ffi::DataType a, F&& f) {
  using T = ffi::DataType;
  auto ok = [](T t) { return t == T::F32 || t == T::BF16; };
  if (!ok(p) || !ok(g) || !ok(a))
    return ffi::Error::InvalidArgument("lopt: params, gradients and accumulators must be float32 or bfloat16");
  auto by_a = [&](auto* p_, auto* g_) {
    return a == T::BF16 ? f(p_, g_, static_cast<bf16*>(nullptr)) : f(p_, g_, static_cast<float*>(nullptr));
  };
  auto by_g = [&](auto* p_) {
    return g == T::BF16 ? by_a(p_, static_cast<bf16*>(nullptr)) : by_a(p_, static_cast<float*>(nullptr));
  };
  return p == T::BF16 ? by_g(static_cast<bf16*>(nullptr)) : by_g(static_cast<float*>(nullptr));
}

template <class X>
using pointee = std::remove_pointer_t<X>;

ffi::Error dispatch(ffi::ThreadPool pool, ffi::AnyBuffer p, ffi::AnyBuffer g, ffi::AnyBuffer m, ffi::AnyBuffer v,
                    ffi::AnyBuffer w0, ffi::AnyBuffer rowb, ffi::AnyBuffer colb, ffi::AnyBuffer srow,
                    ffi::AnyBuffer scol, ffi::AnyBuffer rest, ffi::AnyBuffer scal, ffi::Result<ffi::AnyBuffer> upd,
                    ffi::Result<ffi::AnyBuffer> m_out, ffi::Result<ffi::AnyBuffer> v_out, int64_t rows,
                    int64_t cols) {
  using T = ffi::DataType;
  for (auto b : {w0, rowb, colb, srow, scol, rest, scal})
    if (b.element_type() != T::F32) return ffi::Error::InvalidArgument("lopt: weights must be float32");
  if (v.element_type() != T::F32 || upd->element_type() != p.element_type())
    return ffi::Error::InvalidArgument("lopt: the second moment must be float32 and the update of the params' dtype");
  return with_dtypes(p.element_type(), g.element_type(), m.element_type(), [&](auto* p_, auto* g_, auto* a_) {
    using P = pointee<decltype(p_)>;
    using G = pointee<decltype(g_)>;
    using A = pointee<decltype(a_)>;
    return run<P, G, A>(pool, p, g, m, v, w0, rowb, colb, srow, scol, rest, scal, *upd, *m_out, *v_out, rows, cols);
  });
}

// ---- the normalizers' statistics, on a grid of whole rows of the tensor ------------------

// Partial sums in f32 vectors, flushed to double every 64 blocks (accuracy on large grids).
template <int N>
struct SquareSums {
  vf part[N] = {};
  double total[N] = {};
  int blocks = 0;
  // Adds x[f] (only its first n lanes) to sum f.
  LOPT_INLINE void add(const vf* x, int n) {
    if (n < L) {
      const vf lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
      const vf valid = lane < float(n) ? splat(1.0f) : splat(0.0f);
      for (int f = 0; f < N; ++f) part[f] += x[f] * valid;
    } else {
      for (int f = 0; f < N; ++f) part[f] += x[f];
    }
    if (++blocks == 64) flush();
  }
  void flush() {
    for (int f = 0; f < N; ++f) {
      for (int l = 0; l < L; ++l) total[f] += part[f][l];
      part[f] = vf{};
    }
    blocks = 0;
  }
};

// Calls visit(member, i, n, fac, full) for the elements of the grid's rows j0 .. j1 - 1, i.e.
// rows j0 stride, (j0 + 1) stride, ... of `mb`, 16 at a time: n valid lanes from element i of
// `member`, `fac` Adafactor's per-element factors, `full` (std::true_type / false_type)
// whether a whole vector may be loaded. Rows of at least L columns are read in place; narrower
// tensors' elements are gathered, 16 at a time, into a small local member of their own.
template <class P, class G, class A, class F>
void visit_grid(const Member<P, G, A>& mb, int64_t stride, int64_t j0, int64_t j1, F&& visit) {
  vf fac[NA];
  const int64_t rows = mb.rows, cols = mb.cols, rc = rows * cols;
  if (cols >= L) {
    for (int64_t r = j0 * stride; r < std::min(rows, j1 * stride); r += stride) {
      for (int64_t c = 0; c < cols; c += L) {
        int n = cols - c < L ? int(cols - c) : L;
        if (n == L) {
          for (int a = 0; a < NA; ++a) fac[a] = mb.srow[a * rows + r] * load<true>(mb.scol + a * cols + c, n);
          visit(mb, r * cols + c, n, fac, std::true_type{});
        } else {
          for (int a = 0; a < NA; ++a) fac[a] = mb.srow[a * rows + r] * load<false>(mb.scol + a * cols + c, n);
          visit(mb, r * cols + c, n, fac, std::false_type{});
        }
      }
    }
    return;
  }
  P p_buf[L];
  G g_buf[L];
  A m_buf[NM * L];
  float v_buf[L];
  Member<P, G, A> local = mb;
  local.p = p_buf;
  local.g = g_buf;
  local.m = m_buf;
  local.v = v_buf;
  local.rows = 1;
  local.cols = L;
  const int64_t total = std::min(j1, (rows + stride - 1) / stride) * cols;
  for (int64_t t = j0 * cols; t < total; t += L) {
    int n = total - t < L ? int(total - t) : L;
    for (int l = 0; l < L; ++l) {
      if (l < n) {
        int64_t r = (t + l) / cols * stride, c = (t + l) % cols, i = r * cols + c;
        p_buf[l] = mb.p[i];
        g_buf[l] = mb.g[i];
        for (int k = 0; k < NM; ++k) m_buf[k * L + l] = mb.m[k * rc + i];
        v_buf[l] = mb.v[i];
        for (int a = 0; a < NA; ++a) fac[a][l] = mb.srow[a * rows + r] * mb.scol[a * cols + c];
      } else {
        p_buf[l] = P{};
        g_buf[l] = G{};
        for (int k = 0; k < NM; ++k) m_buf[k * L + l] = A{};
        v_buf[l] = 0.0f;
        for (int a = 0; a < NA; ++a) fac[a][l] = 0.0f;
      }
    }
    visit(local, 0, n, fac, std::true_type{});
  }
}

// Grid rows per work item of the grid statistics (a grid has at most normalizer_samples
// elements: a few items per tensor).
constexpr int64_t GRID_ITEM_ELEMENTS = 8192;

// out[0]: the mean over the grid of the second moment after the step; out[1 + f]: the mean
// square of feature f. The bare rsqrt(v) feature's cap is scal's cap slot (a multiplier)
// times rsqrt(out[0] + eps), as MLPLOpt sets it: two passes over the grid, each in items
// whose partial sums are added in item order (the same result on any number of threads).
template <class P, class G, class A>
void grid_statistics(ffi::ThreadPool& pool, Member<P, G, A> mb, int64_t stride, float* out) {
  const int64_t grid_rows = (mb.rows + stride - 1) / stride;
  const int64_t span = std::max<int64_t>(1, GRID_ITEM_ELEMENTS / mb.cols);
  const int64_t items = (grid_rows + span - 1) / span;
  std::unique_ptr<SquareSums<1>[]> v_sums(new SquareSums<1>[items]);
  parallel_for(pool, items, grid_rows * mb.cols, [&](int64_t it) {
    SquareSums<1>& v_sum = v_sums[it];
    visit_grid(mb, stride, it * span, (it + 1) * span, [&](const auto& m, int64_t i, int n, const vf*, auto full) {
      vf g_ = clip(load<decltype(full)::value>(m.g + i, n), -GRAD_CLIP, GRAD_CLIP);
      vf v_ = stored(mb.scal[2 * NM] * load<decltype(full)::value>(m.v + i, n) + mb.scal[2 * NM + 1] * (g_ * g_), m.v);
      v_sum.add(&v_, n);
    });
    v_sum.flush();
  });
  double v_total = 0.0;
  for (int64_t it = 0; it < items; ++it) v_total += v_sums[it].total[0];
  const double count = double(grid_rows * mb.cols);
  const float rms_mean = float(v_total / count);
  out[0] = rms_mean;
  mb.scal[2 * NM + 2] *= 1.0f / std::sqrt(rms_mean + RSQRT_EPS);
  std::unique_ptr<SquareSums<E>[]> sums(new SquareSums<E>[items]);
  parallel_for(pool, items, grid_rows * mb.cols, [&](int64_t it) {
    SquareSums<E>& sum = sums[it];
    visit_grid(mb, stride, it * span, (it + 1) * span, [&](const auto& m, int64_t i, int n, const vf* fac, auto full) {
      vf x[E];
      m.template features<decltype(full)::value, false>(i, n, fac, x);
      for (int f = 0; f < E; ++f) x[f] *= x[f];
      sum.add(x, n);
    });
    sum.flush();
  });
  for (int f = 0; f < E; ++f) {
    double total = 0.0;
    for (int64_t it = 0; it < items; ++it) total += sums[it].total[f];
    out[1 + f] = float(total / count);
  }
}

template <class P, class G, class A>
ffi::Error run_grid_statistics(ffi::ThreadPool& pool, ffi::AnyBuffer p, ffi::AnyBuffer g, ffi::AnyBuffer m, ffi::AnyBuffer v,
                               ffi::AnyBuffer srow, ffi::AnyBuffer scol, ffi::AnyBuffer scal, ffi::AnyBuffer out,
                               int64_t rows, int64_t cols, int64_t row_stride) {
  const int64_t rc = rows * cols;
  for (int64_t b = 0, batch = p.element_count() / rc; b < batch; ++b) {
    Member<P, G, A> mb{};
    mb.p = static_cast<const P*>(p.untyped_data()) + b * rc;
    mb.g = static_cast<const G*>(g.untyped_data()) + b * rc;
    mb.m = static_cast<A*>(m.untyped_data()) + b * NM * rc;
    mb.v = static_cast<float*>(v.untyped_data()) + b * rc;
    mb.srow = static_cast<const float*>(srow.untyped_data()) + b * NA * rows;
    mb.scol = static_cast<const float*>(scol.untyped_data()) + b * NA * cols;
    std::memcpy(mb.scal, static_cast<const float*>(scal.untyped_data()) + b * NSCAL, sizeof(mb.scal));
    mb.rows = rows;
    mb.cols = cols;
    grid_statistics(pool, mb, row_stride, static_cast<float*>(out.untyped_data()) + b * (E + 1));
  }
  return ffi::Error::Success();
}

ffi::Error grid_statistics_dispatch(ffi::ThreadPool pool, ffi::AnyBuffer p, ffi::AnyBuffer g, ffi::AnyBuffer m, ffi::AnyBuffer v,
                                    ffi::AnyBuffer srow, ffi::AnyBuffer scol, ffi::AnyBuffer scal,
                                    ffi::Result<ffi::AnyBuffer> out, int64_t rows, int64_t cols,
                                    int64_t row_stride) {
  using T = ffi::DataType;
  const int64_t rc = rows * cols;
  if (rc <= 0 || row_stride <= 0 || p.element_count() % rc != 0)
    return ffi::Error::InvalidArgument("lopt: bad grid statistics shape or stride");
  const int64_t batch = p.element_count() / rc;
  if (out->element_type() != T::F32 || out->element_count() != batch * (E + 1) || g.element_count() != batch * rc ||
      m.element_count() != batch * NM * rc || v.element_count() != batch * rc ||
      srow.element_count() != batch * NA * rows || scol.element_count() != batch * NA * cols ||
      scal.element_count() != batch * NSCAL || v.element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("lopt: grid statistics inputs do not match the compiled architecture");
  for (auto b : {srow, scol, scal})
    if (b.element_type() != T::F32) return ffi::Error::InvalidArgument("lopt: row/column factors must be float32");
  return with_dtypes(p.element_type(), g.element_type(), m.element_type(), [&](auto* p_, auto* g_, auto* a_) {
    using P = pointee<decltype(p_)>;
    using G = pointee<decltype(g_)>;
    using A = pointee<decltype(a_)>;
    return run_grid_statistics<P, G, A>(pool, p, g, m, v, srow, scol, scal, *out, rows, cols, row_stride);
  });
}

// ---- Adafactor's statistics: mean over columns and over rows of g^2, in one pass ---------

// Rows [r0, r1): each row's mean of clip(g)^2 into row_out, the column sums into col_sum.
template <class G>
void square_sums(const G* g, int64_t r0, int64_t r1, int64_t cols, float* row_out, float* col_sum) {
  for (int64_t c = 0; c < cols; ++c) col_sum[c] = 0.0f;
  for (int64_t r = r0; r < r1; ++r) {
    const G* gr = g + r * cols;
    vf acc = {};
    int64_t c = 0;
    for (; c + L <= cols; c += L) {
      vf x = clip(load<true>(gr + c, L), -GRAD_CLIP, GRAD_CLIP);
      vf x2 = x * x;
      acc += x2;
      store<true>(col_sum + c, load<true>(col_sum + c, L) + x2, L);
    }
    float row = 0.0f;
    for (int l = 0; l < L; ++l) row += acc[l];
    for (; c < cols; ++c) {
      vf x = clip(load<false>(gr + c, 1), -GRAD_CLIP, GRAD_CLIP);
      row += x[0] * x[0];
      col_sum[c] += x[0] * x[0];
    }
    row_out[r] = row / float(cols);
  }
}

// Per batch member, its rows in chunks of about ITEM_ELEMENTS (items), each chunk's column
// sums into a scratch row of its own, added up in chunk order once all are done.
template <class G>
ffi::Error square_means(ffi::ThreadPool& pool, const G* g, int64_t batch, int64_t rows, int64_t cols,
                        float* row_out, float* col_out) {
  const int64_t span = std::max<int64_t>(1, ITEM_ELEMENTS / cols);
  const int64_t chunks = (rows + span - 1) / span;
  std::unique_ptr<float[]> col_sums(new float[batch * chunks * cols]);
  float* sums = col_sums.get();
  parallel_for(pool, batch * chunks, batch * rows * cols, [=](int64_t it) {
    const int64_t b = it / chunks, r0 = (it % chunks) * span, r1 = std::min(rows, r0 + span);
    square_sums(g + b * rows * cols, r0, r1, cols, row_out + b * rows, sums + it * cols);
  });
  for (int64_t b = 0; b < batch; ++b) {
    float* out = col_out + b * cols;
    for (int64_t c = 0; c < cols; ++c) out[c] = 0.0f;
    for (int64_t k = 0; k < chunks; ++k) {
      const float* part = sums + (b * chunks + k) * cols;
      for (int64_t c = 0; c < cols; ++c) out[c] += part[c];
    }
    for (int64_t c = 0; c < cols; ++c) out[c] /= float(rows);
  }
  return ffi::Error::Success();
}

ffi::Error square_means_dispatch(ffi::ThreadPool pool, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> row_out,
                                 ffi::Result<ffi::AnyBuffer> col_out, int64_t rows, int64_t cols) {
  using T = ffi::DataType;
  const int64_t rc = rows * cols;
  if (rc <= 0 || g.element_count() % rc != 0 || row_out->element_type() != T::F32 ||
      col_out->element_type() != T::F32)
    return ffi::Error::InvalidArgument("lopt: bad square_means shapes or dtypes");
  const int64_t batch = g.element_count() / rc;
  if (row_out->element_count() != batch * rows || col_out->element_count() != batch * cols)
    return ffi::Error::InvalidArgument("lopt: square_means output sizes");
  float* rows_p = static_cast<float*>(row_out->untyped_data());
  float* cols_p = static_cast<float*>(col_out->untyped_data());
  if (g.element_type() == T::F32)
    return square_means(pool, static_cast<const float*>(g.untyped_data()), batch, rows, cols, rows_p, cols_p);
  if (g.element_type() == T::BF16)
    return square_means(pool, static_cast<const bf16*>(g.untyped_data()), batch, rows, cols, rows_p, cols_p);
  return ffi::Error::InvalidArgument("lopt: gradients must be float32 or bfloat16");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptMlpStep, dispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // p
                                  .Arg<ffi::AnyBuffer>()  // g
                                  .Arg<ffi::AnyBuffer>()  // m
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Arg<ffi::AnyBuffer>()  // w0
                                  .Arg<ffi::AnyBuffer>()  // row bias
                                  .Arg<ffi::AnyBuffer>()  // column bias
                                  .Arg<ffi::AnyBuffer>()  // scaled rsqrt rows
                                  .Arg<ffi::AnyBuffer>()  // rsqrt columns
                                  .Arg<ffi::AnyBuffer>()  // later layers
                                  .Arg<ffi::AnyBuffer>()  // scalars
                                  .Ret<ffi::AnyBuffer>()  // update
                                  .Ret<ffi::AnyBuffer>()  // new momenta
                                  .Ret<ffi::AnyBuffer>()  // new second moment
                                  .Attr<int64_t>("rows")
                                  .Attr<int64_t>("cols"));

extern "C" int LoptNativeSizes(int* out) {
  out[0] = E;
  out[1] = O;
  out[2] = NREST;
  out[3] = NSCAL;
  return 4;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptSquareMeans, square_means_dispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // g
                                  .Ret<ffi::AnyBuffer>()  // mean over columns (R,)
                                  .Ret<ffi::AnyBuffer>()  // mean over rows (C,)
                                  .Attr<int64_t>("rows")
                                  .Attr<int64_t>("cols"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LoptGridStatistics, grid_statistics_dispatch,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // p
                                  .Arg<ffi::AnyBuffer>()  // g
                                  .Arg<ffi::AnyBuffer>()  // m, before the step
                                  .Arg<ffi::AnyBuffer>()  // v, before the step
                                  .Arg<ffi::AnyBuffer>()  // scaled rsqrt rows
                                  .Arg<ffi::AnyBuffer>()  // rsqrt columns
                                  .Arg<ffi::AnyBuffer>()  // scalars (cap slot: a multiplier)
                                  .Ret<ffi::AnyBuffer>()  // (1 + E,): mean v, mean squares
                                  .Attr<int64_t>("rows")
                                  .Attr<int64_t>("cols")
                                  .Attr<int64_t>("row_stride"));
