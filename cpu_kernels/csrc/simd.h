// Eight-lane float vectors and the conversions the kernels need: AVX2 + FMA + F16C intrinsics on x86-64, plain
// loops elsewhere (correct but slow; the Python side only enables the kernels by default when SIMD is compiled in).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CPUK_SIMD 1
#include <immintrin.h>
#else
#define CPUK_SIMD 0
#endif
// 16-lane kernels where the compiler targets AVX-512 (the blocked matmul); the rest stays on eight lanes.
#if CPUK_SIMD && defined(__AVX512F__)
#define CPUK_AVX512 1
#else
#define CPUK_AVX512 0
#endif

namespace cpuk {

inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do { ++e; man <<= 1; } while ((man & 0x400) == 0);
    bits = sign | uint32_t(112 - e) << 23 | ((man & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

#if CPUK_SIMD

using V8 = __m256;

inline V8 zero() { return _mm256_setzero_ps(); }
inline V8 splat(float x) { return _mm256_set1_ps(x); }
inline V8 loadf(const float* p) { return _mm256_loadu_ps(p); }
inline void storef(float* p, V8 v) { _mm256_storeu_ps(p, v); }
inline V8 fmadd(V8 a, V8 b, V8 c) { return _mm256_fmadd_ps(a, b, c); }  // a * b + c
inline V8 mul(V8 a, V8 b) { return _mm256_mul_ps(a, b); }
inline V8 add(V8 a, V8 b) { return _mm256_add_ps(a, b); }
inline V8 sub(V8 a, V8 b) { return _mm256_sub_ps(a, b); }
inline V8 vmax(V8 a, V8 b) { return _mm256_max_ps(a, b); }

inline V8 load_i8(const int8_t* p) {  // 8 int8 -> float
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline V8 load_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline V8 load_bf16(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
// 8 bytes of packed nibbles -> the low nibbles and the high nibbles as floats, unsigned (0..15) or signed (-8..7).
inline void load_u4(const uint8_t* p, V8& lo, V8& hi) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(0x0f)));
  hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
}
inline void load_i4(const int8_t* p, V8& lo, V8& hi) {
  const __m256i b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  lo = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(b, 28), 28));
  hi = _mm256_cvtepi32_ps(_mm256_srai_epi32(b, 4));
}
inline float hsum(V8 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// Lane j of the result is the sum of a[j]'s lanes: eight horizontal sums for the price of about two.
inline V8 hsum8(const V8 (&a)[8]) {
  const V8 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const V8 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const V8 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // [a0..a3 low halves | a0..a3 high halves]
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
inline float hmax(V8 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x, relative error ~2e-7 over the float range; 0 for x < -87 (so masked -inf scores vanish).
inline V8 vexp(V8 x) {
  const V8 lo = splat(-87.0f);
  const V8 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), splat(88.0f));
  const V8 n = _mm256_round_ps(_mm256_mul_ps(x, splat(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V8 r = fmadd(n, splat(-0.693359375f), x);  // x - n ln2 in two parts (Cody-Waite)
  r = fmadd(n, splat(2.12194440e-4f), r);
  V8 p = splat(1.9875691500e-4f);
  p = fmadd(p, r, splat(1.3981999507e-3f));
  p = fmadd(p, r, splat(8.3334519073e-3f));
  p = fmadd(p, r, splat(4.1665795894e-2f));
  p = fmadd(p, r, splat(1.6666665459e-1f));
  p = fmadd(p, r, splat(5.0000001201e-1f));
  p = fmadd(p, _mm256_mul_ps(r, r), add(r, splat(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

#else  // portable fallback: same interface, scalar loops

struct V8 { float v[8]; };

inline V8 zero() { return V8{}; }
inline V8 splat(float x) { V8 r; for (float& e : r.v) e = x; return r; }
inline V8 loadf(const float* p) { V8 r; std::memcpy(r.v, p, 32); return r; }
inline void storef(float* p, V8 v) { std::memcpy(p, v.v, 32); }
inline V8 fmadd(V8 a, V8 b, V8 c) { for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i]; return c; }
inline V8 mul(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.v[i] *= b.v[i]; return a; }
inline V8 add(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.v[i] += b.v[i]; return a; }
inline V8 sub(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.v[i] -= b.v[i]; return a; }
inline V8 vmax(V8 a, V8 b) { for (int i = 0; i < 8; ++i) a.v[i] = std::fmax(a.v[i], b.v[i]); return a; }
inline V8 load_i8(const int8_t* p) { V8 r; for (int i = 0; i < 8; ++i) r.v[i] = p[i]; return r; }
inline V8 load_f16(const uint16_t* p) { V8 r; for (int i = 0; i < 8; ++i) r.v[i] = half_to_float(p[i]); return r; }
inline V8 load_bf16(const uint16_t* p) { V8 r; for (int i = 0; i < 8; ++i) r.v[i] = bf16_to_float(p[i]); return r; }
inline void load_u4(const uint8_t* p, V8& lo, V8& hi) {
  for (int i = 0; i < 8; ++i) { lo.v[i] = p[i] & 0x0f; hi.v[i] = p[i] >> 4; }
}
inline void load_i4(const int8_t* p, V8& lo, V8& hi) {
  for (int i = 0; i < 8; ++i) { lo.v[i] = int8_t(uint8_t(p[i]) << 4) >> 4; hi.v[i] = p[i] >> 4; }
}
inline float hsum(V8 v) { float s = 0; for (float e : v.v) s += e; return s; }
inline V8 hsum8(const V8 (&a)[8]) { V8 r; for (int j = 0; j < 8; ++j) r.v[j] = hsum(a[j]); return r; }
inline float hmax(V8 v) { float s = v.v[0]; for (float e : v.v) s = std::fmax(s, e); return s; }
inline V8 vexp(V8 x) { for (float& e : x.v) e = e < -87.0f ? 0.0f : std::exp(e); return x; }

#endif

}  // namespace cpuk
