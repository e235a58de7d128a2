// Reductions over one row of logits for the sampling kernel: the first index of the maximum (NaN-aware, like XLA's
// argmax) and the sum of exp(x - shift).
#pragma once

#include <cmath>
#include <cstdint>

#include "simd.h"

namespace cpuk {

struct Best {
  float value;
  int64_t index;
};

// The largest value of x[0, n) and the first index holding it. Like XLA's argmax, a NaN counts as the largest:
// the first NaN wins (its log-probability then comes out NaN).
inline Best row_max(const float* x, int64_t n) {
  Best best{-INFINITY, 0};
  int64_t i = 0;
  bool nan = false;
#if CPUK_SIMD
  if (n >= 8) {
    // Per lane: the running maximum and the first position (of this lane) reaching it.
    __m256 vmax = _mm256_set1_ps(-INFINITY), unordered = _mm256_setzero_ps();
    __m256i vidx = _mm256_setzero_si256(), pos = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i step = _mm256_set1_epi32(8);
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      const __m256 gt = _mm256_cmp_ps(v, vmax, _CMP_GT_OQ);
      unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      vmax = _mm256_blendv_ps(vmax, v, gt);
      vidx = _mm256_blendv_epi8(vidx, pos, _mm256_castps_si256(gt));
      pos = _mm256_add_epi32(pos, step);
    }
    nan = _mm256_movemask_ps(unordered) != 0;
    alignas(32) float lanes[8];
    alignas(32) int32_t idx[8];
    _mm256_store_ps(lanes, vmax);
    _mm256_store_si256(reinterpret_cast<__m256i*>(idx), vidx);
    best = {lanes[0], idx[0]};
    for (int l = 1; l < 8; ++l)
      if (lanes[l] > best.value || (lanes[l] == best.value && idx[l] < best.index)) best = {lanes[l], idx[l]};
  }
#endif
  for (; i < n; ++i) {
    nan = nan || std::isnan(x[i]);
    if (x[i] > best.value) best = {x[i], i};
  }
  if (nan) {
    for (int64_t j = 0; j < n; ++j)
      if (std::isnan(x[j])) return {x[j], j};
  }
  return best;
}

inline float sum_exp(const float* x, int64_t n, float shift) {
  int64_t i = 0;
  double total = 0.0;
#if CPUK_SIMD
  V8 acc0 = zero(), acc1 = zero();
  const V8 s = splat(shift);
  for (; i + 16 <= n; i += 16) {
    acc0 = add(acc0, vexp(sub(loadf(x + i), s)));
    acc1 = add(acc1, vexp(sub(loadf(x + i + 8), s)));
  }
  for (; i + 8 <= n; i += 8) acc0 = add(acc0, vexp(sub(loadf(x + i), s)));
  total = hsum(add(acc0, acc1));
#endif
  for (; i < n; ++i) total += std::exp(x[i] - shift);
  return static_cast<float>(total);
}

}  // namespace cpuk
