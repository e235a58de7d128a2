// Sampling's reduction over the vocabulary: per row, a draw from softmax(logits / temperature) by the Gumbel-max
// trick, argmax(logits / temperature + g), and the drawn token's log-probability under the raw logits. The noise g
// is the one jax.random.gumbel(key, (vocab,), float32) draws for the row's key, so the draw is the XLA sampler's:
// threefry-2x32 bits of the counter (0, i) (jax's partitionable layout: the xor of the two output words), a uniform
// u in [tiny, 1) from their top 23 bits, g = -log(-log(u)). XLA:CPU spends ~36 ms generating that noise for 64 rows
// of 49,152 on the 2-core VM and another ~17 ms in its scalar argmax; here one vectorised pass per row, rows split
// across the threads. Rows with temperature 0 (or less) take the plain argmax: with every temperature 0 this is
// greedy decoding's reduction (cpu_kernels.greedy), two vector passes per row.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "parallel.h"
#include "row_reduce.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace cpuk {
namespace {

constexpr int64_t kChunk = 512;  // noise and scores per pass: stays in L1 between the two loops

inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

// Threefry-2x32, 20 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), of the counter
// (c0, c1) under the key (k0, k1); returns the xor of the two output words, the 32 random bits jax takes per element.
inline uint32_t threefry_xor(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1) {
  static constexpr int kRotations[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};
  uint32_t x0 = c0 + k0, x1 = c1 + k1;
#pragma GCC unroll 5
  for (int group = 0; group < 5; ++group) {
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      x0 += x1;
      x1 = rotl(x1, kRotations[group & 1][r]);
      x1 ^= x0;
    }
    x0 += ks[(group + 1) % 3];  // key injection after every four rounds
    x1 += ks[(group + 2) % 3] + static_cast<uint32_t>(group + 1);
  }
  return x0 ^ x1;
}

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// log(x) for a positive normal float, branch-free so the loop vectorises: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(t) with t = (m - 1) / (m + 1), |t| < 0.172, by its odd series to t^9 (truncation < 1e-9), and
// e log 2 in two parts so large exponents keep full precision. Within a few ulp of logf.
inline float log_positive(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  float e = static_cast<float>(static_cast<int32_t>(b >> 23) - 127);
  float m = bits_to_float((b & 0x7FFFFFu) | 0x3F800000u);
  const bool above = m > 1.41421356f;
  m = above ? 0.5f * m : m;
  e = above ? e + 1.0f : e;
  const float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
  const float series = t * (2.0f + t2 * (2.0f / 3 + t2 * (0.4f + t2 * (2.0f / 7 + t2 * (2.0f / 9)))));
  return e * 0.693145751953125f + (series + e * 1.42860682030941723e-6f);
}

// jax.random.gumbel's float32 noise ("low" mode) from one element's 32 random bits. The uniform is
// f * (1 - tiny) + tiny with f in [0, 1) from the top 23 bits; in float32 1 - tiny == 1, so u = f + tiny.
inline float gumbel_from_bits(uint32_t bits) {
  const float u = (bits_to_float((bits >> 9) | 0x3F800000u) - 1.0f) + 1.17549435e-38f;
  return -log_positive(-log_positive(u));
}

// argmax(row / temperature + gumbel noise of `key`), first index on ties, first NaN if any (as XLA's argmax).
int64_t gumbel_argmax(const float* row, int64_t vocab, float temperature, uint32_t k0, uint32_t k1) {
  float scores[kChunk];
  Best best{-INFINITY, 0};
  for (int64_t base = 0; base < vocab; base += kChunk) {
    const int64_t n = std::min(kChunk, vocab - base);
    const float* x = row + base;
    for (int64_t j = 0; j < n; ++j)
      scores[j] = x[j] / temperature + gumbel_from_bits(threefry_xor(k0, k1, 0u, static_cast<uint32_t>(base + j)));
    const Best chunk = row_max(scores, n);
    if (std::isnan(chunk.value)) return base + chunk.index;  // earlier chunks had no NaN: this is the first
    if (chunk.value > best.value) best = {chunk.value, base + chunk.index};
  }
  return best.index;
}

ffi::Error SampleImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits, ffi::Buffer<ffi::F32> temperature,
                      ffi::Buffer<ffi::U32> keys, ffi::Buffer<ffi::S32> valid_rows,
                      ffi::ResultBuffer<ffi::S32> tokens, ffi::ResultBuffer<ffi::F32> logprob) {
  const auto dims = logits.dimensions();
  if (dims.size() != 2 || dims[1] < 1) return ffi::Error::InvalidArgument("sample: logits must be [rows, vocab]");
  const int64_t rows = dims[0], vocab = dims[1];
  if (temperature.element_count() != rows || keys.element_count() != 2 * rows)
    return ffi::Error::InvalidArgument("sample: temperature must be [rows] and keys [rows, 2]");
  if (tokens->element_count() != rows || logprob->element_count() != rows)
    return ffi::Error::InvalidArgument("sample: tokens and logprob must be [rows]");
  if (vocab > (int64_t{1} << 32)) return ffi::Error::InvalidArgument("sample: vocab must fit a 32-bit counter");
  const float* x = logits.typed_data();
  const float* temp = temperature.typed_data();
  const uint32_t* key = keys.typed_data();
  int32_t* tok = tokens->typed_data();
  float* lp = logprob->typed_data();
  // Rows from `valid_rows` on are a bucket's padding: token 0, logprob 0, not computed.
  const int64_t used = std::clamp<int64_t>(*valid_rows.typed_data(), 0, rows);
  std::fill(tok + used, tok + rows, 0);
  std::fill(lp + used, lp + rows, 0.0f);
  parallel_for(pool, used, [&](int64_t r) {
    const float* row = x + r * vocab;
    const Best best = row_max(row, vocab);
    const int64_t token = temp[r] > 0 ? gumbel_argmax(row, vocab, temp[r], key[2 * r], key[2 * r + 1]) : best.index;
    tok[r] = static_cast<int32_t>(token);
    // log softmax(row)[token] = row[token] - max - log(sum exp(row - max)); an all -inf row gives -inf.
    lp[r] = std::isinf(best.value) && best.value < 0
                ? -INFINITY
                : row[token] - best.value - std::log(sum_exp(row, vocab, best.value));
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace cpuk

XLA_FFI_DEFINE_HANDLER_SYMBOL(cpuk_sample, cpuk::SampleImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // logits [rows, vocab]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // temperature [rows]
                                  .Arg<ffi::Buffer<ffi::U32>>()  // keys [rows, 2]: jax.random raw key data
                                  .Arg<ffi::Buffer<ffi::S32>>()  // valid_rows [1]
                                  .Ret<ffi::Buffer<ffi::S32>>()  // tokens [rows]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // logprob [rows]
