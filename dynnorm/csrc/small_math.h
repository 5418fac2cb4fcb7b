// Building blocks of the layers' (N, C)-sized math, forward and backward, on plain arrays.
//
// Statistics of unions of sets come from per-set moments by the law of total variance,
// var = mean(var_k) + mean((mean_k - pooled_mean)^2), which cannot cancel. Backward functions accumulate
// (+=) into their gradient arrays.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

namespace dynnorm {

template <typename T>
using Vec = std::vector<T>;

// Moments of contiguous groups of `size` channels of each sample: (N, C) -> (N, C / size).
template <typename T>
void group_moments(int64_t N, int64_t C, int64_t size, const T* mean, const T* var, T* out_mean, T* out_var) {
  const int64_t groups = C / size;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const T* m = mean + n * C + g * size;
      const T* v = var + n * C + g * size;
      T sum_m = 0, sum_v = 0;
      for (int64_t i = 0; i < size; ++i) {
        sum_m += m[i];
        sum_v += v[i];
      }
      const T pooled = sum_m / size;
      T spread = 0;
      for (int64_t i = 0; i < size; ++i) spread += (m[i] - pooled) * (m[i] - pooled);
      out_mean[n * groups + g] = pooled;
      out_var[n * groups + g] = (sum_v + spread) / size;
    }
  }
}

// pooled = mean(m_i), var = mean(v_i + (m_i - pooled)^2): dv_i = dvar / size, and since the spread's
// derivative in pooled sums to zero, dm_i = dpooled / size + 2 dvar (m_i - pooled) / size.
template <typename T>
void group_moments_backward(int64_t N, int64_t C, int64_t size, const T* mean, const T* pooled_mean,
                            const T* g_pooled_mean, const T* g_pooled_var, T* g_mean, T* g_var) {
  const int64_t groups = C / size;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t k = n * groups + g;
      const T gm = g_pooled_mean[k] / size, gv = g_pooled_var[k] / size;
      for (int64_t i = 0; i < size; ++i) {
        const int64_t j = n * C + g * size + i;
        g_var[j] += gv;
        g_mean[j] += gm + 2 * gv * (mean[j] - pooled_mean[k]);
      }
    }
  }
}

// Moments of each channel over the batch: (N, C) -> (C).
template <typename T>
void batch_moments(int64_t N, int64_t C, const T* mean, const T* var, T* out_mean, T* out_var) {
  for (int64_t c = 0; c < C; ++c) {
    T sum_m = 0, sum_v = 0;
    for (int64_t n = 0; n < N; ++n) {
      sum_m += mean[n * C + c];
      sum_v += var[n * C + c];
    }
    const T pooled = sum_m / N;
    T spread = 0;
    for (int64_t n = 0; n < N; ++n) spread += (mean[n * C + c] - pooled) * (mean[n * C + c] - pooled);
    out_mean[c] = pooled;
    out_var[c] = (sum_v + spread) / N;
  }
}

// The same derivative as group_moments_backward, pooling over the batch.
template <typename T>
void batch_moments_backward(int64_t N, int64_t C, const T* mean, const T* pooled_mean, const T* g_pooled_mean,
                            const T* g_pooled_var, T* g_mean, T* g_var) {
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t j = n * C + c;
      g_var[j] += g_pooled_var[c] / N;
      g_mean[j] += g_pooled_mean[c] / N + 2 * g_pooled_var[c] / N * (mean[j] - pooled_mean[c]);
    }
  }
}

// Softmax of K logits; entries with skip[k] get weight 0 (left out of the mixture).
template <typename T>
void softmax(int64_t K, const T* logits, const bool* skip, T* out) {
  T top = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < K; ++k) {
    if (!skip[k]) top = std::max(top, logits[k]);
  }
  T total = 0;
  for (int64_t k = 0; k < K; ++k) {
    out[k] = skip[k] ? T(0) : std::exp(logits[k] - top);
    total += out[k];
  }
  for (int64_t k = 0; k < K; ++k) out[k] /= total;
}

// Gradient of the logits of a softmax (or any renormalization onto the simplex with the same Jacobian):
// dw_k/dl_j = w_k (delta_kj - w_j), so dl_j = w_j (g_j - sum_k w_k g_k).
template <typename T>
void softmax_backward(int64_t K, const T* weights, const T* g_weights, T* g_logits) {
  T dot = 0;
  for (int64_t k = 0; k < K; ++k) dot += weights[k] * g_weights[k];
  for (int64_t k = 0; k < K; ++k) g_logits[k] += weights[k] * (g_weights[k] - dot);
}

// Y (rows, out) = X (rows, in) W^T (+ b); W is (out, in), b (out) or null.
template <typename T>
void linear(int64_t rows, int64_t in, int64_t out, const T* X, const T* W, const T* b, T* Y) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = X + r * in;
    for (int64_t o = 0; o < out; ++o) {
      const T* w = W + o * in;
      T sum = b ? b[o] : T(0);
      for (int64_t i = 0; i < in; ++i) sum += w[i] * x[i];
      Y[r * out + o] = sum;
    }
  }
}

// Backward of `linear`: gW += gY^T X, gb += sum_rows gY, gX += gY W (each skipped when null).
template <typename T>
void linear_backward(int64_t rows, int64_t in, int64_t out, const T* X, const T* W, const T* gY, T* gX, T* gW,
                     T* gb) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = X + r * in;
    const T* gy = gY + r * out;
    for (int64_t o = 0; o < out; ++o) {
      const T go = gy[o];
      if (go == T(0)) continue;
      if (gb) gb[o] += go;
      const T* w = W + o * in;
      if (gW) {
        T* gw = gW + o * in;
        for (int64_t i = 0; i < in; ++i) gw[i] += go * x[i];
      }
      if (gX) {
        T* gx = gX + r * in;
        for (int64_t i = 0; i < in; ++i) gx[i] += go * w[i];
      }
    }
  }
}

// Sparsemax (Euclidean projection onto the simplex) of K values; support[k] tells where out[k] > 0.
template <typename T>
void sparsemax(int64_t K, const T* v, T* out, bool* support) {
  Vec<T> sorted(v, v + K);
  std::sort(sorted.begin(), sorted.end(), [](T a, T b) { return a > b; });
  T cumulative = 0, threshold = 0;
  for (int64_t k = 0; k < K; ++k) {
    cumulative += sorted[k];
    if (k == 0 || sorted[k] - (cumulative - 1) / (k + 1) > 0) threshold = (cumulative - 1) / (k + 1);
  }
  for (int64_t k = 0; k < K; ++k) {
    out[k] = std::max(v[k] - threshold, T(0));
    support[k] = out[k] > 0;
  }
}

// SparsestMax (SSN): sparsemax pushed from the centre of its face onto a circle of `radius`, projected back
// onto smaller faces while the push leaves the simplex. The forward records the steps it took; backward
// multiplies by the transposed Jacobians: sparsemax, g -> (g - mean over the support(g)) on the support;
// the push p = u + r (w - u) / |w - u|, g -> (r / |w - u|) (g - e (e . g)) with e the unit push direction.
template <typename T>
struct SparsestMax {
  struct Push {
    T scale;  // r / |w - u|
    Vec<T> direction;
  };
  int64_t K = 0;
  std::vector<std::vector<bool>> supports;  // of each sparsemax, in order
  std::vector<Push> pushes;                 // pushes[i] follows supports[i]
  Vec<T> out;

  static constexpr T kOneHotTolerance = T(1e-6);

  SparsestMax(int64_t size, const T* logits, T radius) : K(size), out(size) {
    Vec<T> point(K);
    std::unique_ptr<bool[]> support(new bool[K]);
    sparsemax(K, logits, point.data(), support.get());
    supports.emplace_back(support.get(), support.get() + K);
    Vec<T> previous_centre;
    for (int64_t round = 0; round < K; ++round) {
      T top = 0, count = 0;
      for (int64_t k = 0; k < K; ++k) top = std::max(top, point[k]), count += supports.back()[k];
      Vec<T> centre(K);
      for (int64_t k = 0; k < K; ++k) centre[k] = supports.back()[k] ? T(1) / count : T(0);
      if (!previous_centre.empty()) {
        T moved = 0;
        for (int64_t k = 0; k < K; ++k) moved += (centre[k] - previous_centre[k]) * (centre[k] - previous_centre[k]);
        radius = std::sqrt(std::max(radius * radius - moved, T(0)));
      }
      T distance = 0;
      for (int64_t k = 0; k < K; ++k) distance += (point[k] - centre[k]) * (point[k] - centre[k]);
      distance = std::sqrt(distance);
      if (top >= 1 - kOneHotTolerance || distance == 0 || distance >= radius) break;
      Push push{radius / distance, Vec<T>(K)};
      Vec<T> pushed(K);
      T lowest = 1;
      for (int64_t k = 0; k < K; ++k) {
        push.direction[k] = (point[k] - centre[k]) / distance;
        pushed[k] = centre[k] + radius * push.direction[k];
        lowest = std::min(lowest, pushed[k]);
      }
      pushes.push_back(std::move(push));
      if (lowest >= 0) {
        for (int64_t k = 0; k < K; ++k) point[k] = std::min(pushed[k], T(1));
        break;
      }
      sparsemax(K, pushed.data(), point.data(), support.get());
      supports.emplace_back(support.get(), support.get() + K);
      previous_centre = std::move(centre);
    }
    out = point;
  }

  // Gradient of the logits from the gradient of the output (accumulated into g_logits).
  void backward(const T* g_out, T* g_logits) const {
    Vec<T> g(g_out, g_out + K);
    for (int64_t i = static_cast<int64_t>(supports.size()) - 1; i >= 0; --i) {
      if (i < static_cast<int64_t>(pushes.size())) {  // the push that followed this sparsemax
        const Push& push = pushes[i];
        T along = 0;
        for (int64_t k = 0; k < K; ++k) along += push.direction[k] * g[k];
        for (int64_t k = 0; k < K; ++k) g[k] = push.scale * (g[k] - push.direction[k] * along);
      }
      T total = 0, count = 0;
      for (int64_t k = 0; k < K; ++k) {
        if (supports[i][k]) total += g[k], count += 1;
      }
      for (int64_t k = 0; k < K; ++k) g[k] = supports[i][k] ? g[k] - total / count : T(0);
    }
    for (int64_t k = 0; k < K; ++k) g_logits[k] += g[k];
  }
};

template <typename T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

}  // namespace dynnorm
