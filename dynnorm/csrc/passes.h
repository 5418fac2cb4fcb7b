// The passes over the whole input that every dynnorm layer makes, on CPU.
//
// Every layer computes y = (x - mean[n, c]) * scale[n, c] + shift[n, c], where mean is the per-(n, c)
// instance mean and scale/shift come from small (N, C) math. Means are carried relative to a reference value
// R of the call, m = mean - R, and x - mean is formed as (x - R) - m: for an input with a large common offset
// both differences are exact or small, so no precision is lost to the offset. Only four steps touch the whole
// tensor:
//
//   moments      estimate[n, c], correction[n, c], var[n, c]   (forward; mean = estimate + correction)
//   normalize    y = ((x - R) - m) * scale + shift             (forward)
//   grad sums    sum(dy), sum(dy * ((x - R) - m)) per (n, c)   (backward)
//   input grad   dx = dy * scale + ((x - R) - m) * a + b       (backward)
//
// for contiguous (N, C, *) inputs (one row of L values per (n, c)) and channels-last inputs (one slab of
// L positions x C channels per sample). Values are accumulated in acc_t (float for float/bf16/fp16,
// double for double) with blocked, lane-split sums (rounding error ~ (kBlock / kLanes + L / kBlock) ulps
// instead of L ulps). The moments use the corrected two-pass algorithm: a first pass estimates the
// mean, the second sums the deviations d = x - estimate and their squares, and
//   mean = estimate + sum(d) / L,   var = sum(d^2) / L - (sum(d) / L)^2,
// which stays accurate when |mean| >> std (no E[x^2] - E[x]^2 on raw values).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace dynnorm {

constexpr int64_t kLanes = 32;
constexpr int64_t kBlock = 256;
constexpr int64_t kSlabBlock = 32;           // positions per block of a channels-last slab
constexpr int64_t kGrainElements = 1 << 15;  // elements per parallel task

inline int64_t grain(int64_t elements_per_item) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(elements_per_item, 1));
}

// ---- one contiguous row of L values --------------------------------------------------------------------

// sum(f(i)) over [0, L) by blocks of up to kBlock values; within a block kLanes independent partial sums
// (which the compiler keeps in several SIMD registers, so the additions do not wait on each other), and the
// block sums, then the last L mod kLanes values, are added in order.
template <typename acc_t, typename F>
inline acc_t blocked_sum(int64_t L, const F& f) {
  acc_t total = 0;
  int64_t i = 0;
  for (; i + kLanes <= L;) {  // whole blocks of lanes (short rows skip the lanes: no setup cost per row)
    const int64_t stop = std::min(L, i + kBlock);
    acc_t lanes[kLanes] = {};
    for (; i + kLanes <= stop; i += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) lanes[j] += f(i + j);
    }
    acc_t block = 0;
    for (int64_t j = 0; j < kLanes; ++j) block += lanes[j];
    total += block;
  }
  for (; i < L; ++i) total += f(i);
  return total;
}

// Two sums at once: (sum(f(i)), sum(g(i))).
template <typename acc_t, typename F, typename G>
inline void blocked_sum2(int64_t L, const F& f, const G& g, acc_t& total_f, acc_t& total_g) {
  total_f = 0;
  total_g = 0;
  int64_t i = 0;
  for (; i + kLanes <= L;) {
    const int64_t stop = std::min(L, i + kBlock);
    acc_t lanes_f[kLanes] = {};
    acc_t lanes_g[kLanes] = {};
    for (; i + kLanes <= stop; i += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) {
        lanes_f[j] += f(i + j);
        lanes_g[j] += g(i + j);
      }
    }
    acc_t block_f = 0, block_g = 0;
    for (int64_t j = 0; j < kLanes; ++j) {
      block_f += lanes_f[j];
      block_g += lanes_g[j];
    }
    total_f += block_f;
    total_g += block_g;
  }
  for (; i < L; ++i) {
    total_f += f(i);
    total_g += g(i);
  }
}

template <typename scalar_t, typename acc_t>
inline void row_moments(const scalar_t* x, int64_t L, acc_t& estimate_out, acc_t& correction_out, acc_t& var) {
  const acc_t estimate = blocked_sum<acc_t>(L, [&](int64_t i) { return static_cast<acc_t>(x[i]); }) / L;
  acc_t sum_d, sum_d2;
  blocked_sum2<acc_t>(
      L, [&](int64_t i) { return static_cast<acc_t>(x[i]) - estimate; },
      [&](int64_t i) {
        const acc_t d = static_cast<acc_t>(x[i]) - estimate;
        return d * d;
      },
      sum_d, sum_d2);
  const acc_t correction = sum_d / L;
  estimate_out = estimate;
  correction_out = correction;
  var = std::max<acc_t>(sum_d2 / L - correction * correction, acc_t(0));
}

// ---- one channels-last slab of L positions x C channels --------------------------------------------------

// out[c] = sum over positions l of f(l * C + c, c), blocked over kSlabBlock positions. block: C scratch values.
template <typename acc_t, typename F>
inline void slab_sum(int64_t L, int64_t C, const F& f, acc_t* out, acc_t* block) {
  std::fill(out, out + C, acc_t(0));
  for (int64_t start = 0; start < L; start += kSlabBlock) {
    const int64_t stop = std::min(L, start + kSlabBlock);
    std::fill(block, block + C, acc_t(0));
    for (int64_t l = start; l < stop; ++l) {
      const int64_t base = l * C;
      for (int64_t c = 0; c < C; ++c) block[c] += f(base + c, c);
    }
    for (int64_t c = 0; c < C; ++c) out[c] += block[c];
  }
}

template <typename scalar_t, typename acc_t>
inline void slab_moments(const scalar_t* x, int64_t L, int64_t C, acc_t* estimate, acc_t* correction, acc_t* var,
                         acc_t* work) {
  acc_t* sum_d = work;
  acc_t* block = work + C;
  slab_sum<acc_t>(L, C, [&](int64_t i, int64_t) { return static_cast<acc_t>(x[i]); }, estimate, block);
  for (int64_t c = 0; c < C; ++c) estimate[c] /= L;
  slab_sum<acc_t>(L, C, [&](int64_t i, int64_t c) { return static_cast<acc_t>(x[i]) - estimate[c]; }, sum_d, block);
  slab_sum<acc_t>(
      L, C,
      [&](int64_t i, int64_t c) {
        const acc_t d = static_cast<acc_t>(x[i]) - estimate[c];
        return d * d;
      },
      var, block);
  for (int64_t c = 0; c < C; ++c) {
    correction[c] = sum_d[c] / L;
    var[c] = std::max<acc_t>(var[c] / L - correction[c] * correction[c], acc_t(0));
  }
}

// ---- whole tensors ---------------------------------------------------------------------------------------

struct Geometry {
  int64_t N, C, L;
  bool channels_last;
};

// Per-(n, c) mean (as estimate + correction) and biased variance, each N * C values.
template <typename scalar_t, typename acc_t>
void instance_moments(const Geometry& g, const scalar_t* x, acc_t* estimate, acc_t* correction, acc_t* var) {
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, grain(g.L), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) row_moments(x + r * g.L, g.L, estimate[r], correction[r], var[r]);
    });
    return;
  }
  at::parallel_for(0, g.N, grain(g.L * g.C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> work(2 * g.C);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t at = n * g.C;
      slab_moments(x + n * g.L * g.C, g.L, g.C, estimate + at, correction + at, var + at, work.data());
    }
  });
}

// f(element index, per-(n, c) index) for every element of a channels-last input, in parallel over samples.
template <typename F>
void for_each_channels_last(const Geometry& g, const F& f) {
  at::parallel_for(0, g.N, grain(g.L * g.C), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t l = 0; l < g.L; ++l) {
        const int64_t base = (n * g.L + l) * g.C;
        for (int64_t c = 0; c < g.C; ++c) f(base + c, n * g.C + c);
      }
    }
  });
}

// y = ((x - R) - center) * scale + shift with per-(n, c) coefficients.
template <typename scalar_t, typename acc_t>
void normalize(const Geometry& g, const scalar_t* x, scalar_t* y, acc_t R, const acc_t* center, const acc_t* scale,
               const acc_t* shift) {
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, grain(g.L), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = x + r * g.L;
        scalar_t* yr = y + r * g.L;
        const acc_t m = center[r], s = scale[r], t = shift[r];
        for (int64_t i = 0; i < g.L; ++i) yr[i] = static_cast<scalar_t>(((static_cast<acc_t>(xr[i]) - R) - m) * s + t);
      }
    });
    return;
  }
  for_each_channels_last(g, [&](int64_t i, int64_t j) {
    y[i] = static_cast<scalar_t>(((static_cast<acc_t>(x[i]) - R) - center[j]) * scale[j] + shift[j]);
  });
}

// sum(dy) and sum(dy * ((x - R) - center)) per (n, c).
template <typename scalar_t, typename acc_t>
void grad_sums(const Geometry& g, const scalar_t* dy, const scalar_t* x, acc_t R, const acc_t* center, acc_t* sum_dy,
               acc_t* sum_dy_xc) {
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, grain(g.L), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* dr = dy + r * g.L;
        const scalar_t* xr = x + r * g.L;
        const acc_t m = center[r];
        blocked_sum2<acc_t>(
            g.L, [&](int64_t i) { return static_cast<acc_t>(dr[i]); },
            [&](int64_t i) { return static_cast<acc_t>(dr[i]) * ((static_cast<acc_t>(xr[i]) - R) - m); }, sum_dy[r],
            sum_dy_xc[r]);
      }
    });
    return;
  }
  at::parallel_for(0, g.N, grain(g.L * g.C), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> block(g.C);
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* dn = dy + n * g.L * g.C;
      const scalar_t* xn = x + n * g.L * g.C;
      const acc_t* m = center + n * g.C;
      slab_sum<acc_t>(g.L, g.C, [&](int64_t i, int64_t) { return static_cast<acc_t>(dn[i]); }, sum_dy + n * g.C,
                      block.data());
      slab_sum<acc_t>(
          g.L, g.C,
          [&](int64_t i, int64_t c) { return static_cast<acc_t>(dn[i]) * ((static_cast<acc_t>(xn[i]) - R) - m[c]); },
          sum_dy_xc + n * g.C, block.data());
    }
  });
}

// dx = dy * scale + ((x - R) - center) * a + b with per-(n, c) coefficients.
template <typename scalar_t, typename acc_t>
void input_grad(const Geometry& g, const scalar_t* dy, const scalar_t* x, scalar_t* dx, acc_t R, const acc_t* center,
                const acc_t* scale, const acc_t* a, const acc_t* b) {
  if (!g.channels_last) {
    at::parallel_for(0, g.N * g.C, grain(g.L), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* dr = dy + r * g.L;
        const scalar_t* xr = x + r * g.L;
        scalar_t* out = dx + r * g.L;
        const acc_t m = center[r], s = scale[r], ar = a[r], br = b[r];
        for (int64_t i = 0; i < g.L; ++i) {
          out[i] = static_cast<scalar_t>(static_cast<acc_t>(dr[i]) * s + ((static_cast<acc_t>(xr[i]) - R) - m) * ar + br);
        }
      }
    });
    return;
  }
  for_each_channels_last(g, [&](int64_t i, int64_t j) {
    dx[i] = static_cast<scalar_t>(static_cast<acc_t>(dy[i]) * scale[j] + ((static_cast<acc_t>(x[i]) - R) - center[j]) * a[j] +
                                  b[j]);
  });
}

}  // namespace dynnorm
