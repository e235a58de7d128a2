// Greedy decoding's reduction over the vocabulary: per row of logits, the first index of the largest value and
// its log-probability, -log(sum(exp(x - max))). XLA:CPU runs argmax as a scalar variadic reduce and log_softmax as
// three passes that write the whole [rows, vocab] result (64 rows of the default model's 49,152: 16.6 ms on the
// 2-core VM); here two vector passes over each row, rows split across the threads.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace cpuk {
namespace {

struct Best {
  float value;
  int64_t index;
};

// The largest value of x[0, n) and the first index holding it. Like XLA's argmax, a NaN counts as the largest:
// the first NaN wins (its log-probability then comes out NaN).
Best row_max(const float* x, int64_t n) {
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

float sum_exp(const float* x, int64_t n, float shift) {
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

ffi::Error GreedyImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits, ffi::Buffer<ffi::S32> valid_rows,
                      ffi::ResultBuffer<ffi::S32> tokens, ffi::ResultBuffer<ffi::F32> logprob) {
  const auto dims = logits.dimensions();
  if (dims.size() != 2 || dims[1] < 1) return ffi::Error::InvalidArgument("greedy: logits must be [rows, vocab]");
  const int64_t rows = dims[0], vocab = dims[1];
  if (tokens->element_count() != rows || logprob->element_count() != rows)
    return ffi::Error::InvalidArgument("greedy: tokens and logprob must be [rows]");
  const float* x = logits.typed_data();
  int32_t* tok = tokens->typed_data();
  float* lp = logprob->typed_data();
  // Rows from `valid_rows` on are a bucket's padding: token 0, logprob 0, not computed.
  const int64_t used = std::clamp<int64_t>(*valid_rows.typed_data(), 0, rows);
  std::fill(tok + used, tok + rows, 0);
  std::fill(lp + used, lp + rows, 0.0f);
  parallel_for(pool, used, [&](int64_t r) {
    const float* row = x + r * vocab;
    const Best best = row_max(row, vocab);
    tok[r] = static_cast<int32_t>(best.index);
    // x[best] - max - log(sum exp(x - max)); an all -inf row has no distribution: -inf, like log_softmax's NaN-free
    // limit. A +inf or NaN maximum propagates as NaN.
    lp[r] = std::isinf(best.value) && best.value < 0 ? -INFINITY : -std::log(sum_exp(row, vocab, best.value));
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace cpuk

XLA_FFI_DEFINE_HANDLER_SYMBOL(cpuk_greedy, cpuk::GreedyImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // logits [rows, vocab]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // valid_rows [1]
                                  .Ret<ffi::Buffer<ffi::S32>>()  // tokens [rows]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // logprob [rows]
