// The blocked matmul's AVX-512 register block (used where the compiler targets AVX-512; CPUK_AVX512 in simd.h).
#pragma once

#include <cstdint>

#include "simd.h"
#include "tiles.h"

namespace cpuk {

#if CPUK_AVX512
// AVX-512: R rows x the whole 32-channel tile over kc entries of K (two 16-lane accumulators per row; R = 12 keeps
// 24 accumulators, the two weight vectors and a broadcast in the 32 registers). `first` starts the sums; later
// blocks of K add to y. `pf`: the first row block over this block of K streams it from memory, so it prefetches
// ahead (decode steps of 16-64 rows: -10-20%); later row blocks find it in L1 and skip that (4% at 512 rows).
template <int R>
void block512(const float* wt, int64_t kc, const float* x, int64_t ldx, float* y, int64_t ldy, bool first, bool pf) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) {
    acc[r][0] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + r * ldy);
    acc[r][1] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y + r * ldy + 16);
  }
  for (int64_t kk = 0; kk < kc; ++kk) {
    if (pf) prefetch_ahead<Fmt::kF32>(reinterpret_cast<const uint8_t*>(wt + kk * kTile));
    const __m512 w0 = _mm512_loadu_ps(wt + kk * kTile), w1 = _mm512_loadu_ps(wt + kk * kTile + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r * ldx + kk]);
      acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(y + r * ldy, acc[r][0]);
    _mm512_storeu_ps(y + r * ldy + 16, acc[r][1]);
  }
}

template <int R>
void blocks512(const float* wt, int64_t kc, const float* x, int64_t ldx, float* y, int64_t ldy, bool first,
               bool pf, int64_t m) {
  if constexpr (R > 0) {
    if (m == R) return block512<R>(wt, kc, x, ldx, y, ldy, first, pf);
    return blocks512<R - 1>(wt, kc, x, ldx, y, ldy, first, pf, m);
  }
}

// Entries of K per block: the tile's block (192 x 32 floats, 24 KiB) stays in L1 while every row block passes over it.
constexpr int64_t kDepthBlock = 192;
#endif

}  // namespace cpuk
