// The matmul's fused loop for a few rows of x (decode a tile row, multiply-add it into every row) on AVX-512: the
// whole 32-channel tile row decodes into two 16-lane vectors, so every row of x goes over the tile in one pass and
// the weights are read as one sequential stream (the eight-lane loop in matmul.cc splits the tile in two halves).
#pragma once

#include <algorithm>
#include <cstdint>

#include "simd.h"
#include "tiles.h"

namespace cpuk {

#if CPUK_AVX512

// Tile row `row` as channels [0, 16) and [16, 32). 4-bit rows: byte b holds channel b (low) and b + 16 (high).
template <Fmt F>
inline void decode16(const uint8_t* row, __m512& v0, __m512& v1) {
  if constexpr (F == Fmt::kF32) {
    v0 = _mm512_loadu_ps(row);
    v1 = _mm512_loadu_ps(row + 64);
  } else if constexpr (F == Fmt::kI8) {
    v0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row))));
    v1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16))));
  } else if constexpr (F == Fmt::kU4) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
    v0 = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(0x0f)));
    v1 = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
  } else {
    const __m512i b = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row)));
    v0 = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(b, 28), 28));
    v1 = _mm512_cvtepi32_ps(_mm512_srai_epi32(b, 4));
  }
}

inline __m512 vec16_at(const void* p, int64_t i, bool f16) {
  if (f16) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i)));
  return _mm512_loadu_ps(static_cast<const float*>(p) + i);
}

// R rows of x times the whole tile. Grouped weights keep per-group partial sums and fold in the group's scale (and
// offset times the group's sum of x) at the group's end.
template <Fmt F, int R, bool kGrouped>
void fused512(const Weight& w, const float* x, const float* xsum, float* y, int64_t tile) {
  const int64_t c0 = tile * kTile;
  __m512 acc[R][2];
  for (auto& row : acc) row[0] = row[1] = _mm512_setzero_ps();
  const int64_t groups = kGrouped ? w.groups : 1, gs = w.k / groups;
  for (int64_t g = 0; g < groups; ++g) {
    __m512 part[R][2];
    for (auto& row : part) row[0] = row[1] = _mm512_setzero_ps();
    for (int64_t kk = g * gs; kk < (g + 1) * gs; ++kk) {
      const uint8_t* row = tile_row(w, F, tile, kk);
      prefetch_ahead<F>(row);
      __m512 v0, v1;
      decode16<F>(row, v0, v1);
      for (int r = 0; r < R; ++r) {
        const __m512 xb = _mm512_set1_ps(x[r * w.k + kk]);
        part[r][0] = _mm512_fmadd_ps(xb, v0, part[r][0]);
        part[r][1] = _mm512_fmadd_ps(xb, v1, part[r][1]);
      }
    }
    if constexpr (kGrouped) {
      const __m512 s0 = vec16_at(w.scales, g * w.n + c0, w.f16), s1 = vec16_at(w.scales, g * w.n + c0 + 16, w.f16);
      for (int r = 0; r < R; ++r) {
        acc[r][0] = _mm512_fmadd_ps(part[r][0], s0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(part[r][1], s1, acc[r][1]);
      }
      if (w.offsets != nullptr) {
        const __m512 o0 = vec16_at(w.offsets, g * w.n + c0, w.f16), o1 = vec16_at(w.offsets, g * w.n + c0 + 16, w.f16);
        for (int r = 0; r < R; ++r) {
          const __m512 s = _mm512_set1_ps(xsum[r * w.groups + g]);
          acc[r][0] = _mm512_fmadd_ps(s, o0, acc[r][0]);
          acc[r][1] = _mm512_fmadd_ps(s, o1, acc[r][1]);
        }
      }
    } else {
      for (int r = 0; r < R; ++r) acc[r][0] = part[r][0], acc[r][1] = part[r][1];
    }
  }
  if (!kGrouped && w.scales != nullptr) {
    const __m512 s0 = vec16_at(w.scales, c0, w.f16), s1 = vec16_at(w.scales, c0 + 16, w.f16);
    for (int r = 0; r < R; ++r) acc[r][0] = _mm512_mul_ps(acc[r][0], s0), acc[r][1] = _mm512_mul_ps(acc[r][1], s1);
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(y + r * w.n + c0, acc[r][0]);
    _mm512_storeu_ps(y + r * w.n + c0 + 16, acc[r][1]);
  }
}

// Rows [0, m) of x (m < 8) over one tile: one pass for ungrouped weights (2 m accumulators), passes of at most
// four rows for grouped ones (which also hold the per-group partial sums).
template <Fmt F, bool kGrouped>
void fused512_tile(const Weight& w, const float* x, const float* xsum, float* y, int64_t m, int64_t tile) {
  constexpr int kMax = kGrouped ? 4 : 7;
  for (int64_t r = 0; r < m; r += kMax) {
    const float* xr = x + r * w.k;
    const float* sr = xsum + r * w.groups;
    float* yr = y + r * w.n;
    switch (std::min<int64_t>(m - r, kMax)) {
      case 1: fused512<F, 1, kGrouped>(w, xr, sr, yr, tile); break;
      case 2: fused512<F, 2, kGrouped>(w, xr, sr, yr, tile); break;
      case 3: fused512<F, 3, kGrouped>(w, xr, sr, yr, tile); break;
      case 4: fused512<F, 4, kGrouped>(w, xr, sr, yr, tile); break;
      case 5: if constexpr (kMax > 4) fused512<F, 5, kGrouped>(w, xr, sr, yr, tile); break;
      case 6: if constexpr (kMax > 4) fused512<F, 6, kGrouped>(w, xr, sr, yr, tile); break;
      case 7: if constexpr (kMax > 4) fused512<F, 7, kGrouped>(w, xr, sr, yr, tile); break;
      default: break;
    }
  }
}

#endif

}  // namespace cpuk
