// Attention for a prompt chunk as small matrix products. A tile of a sequence's consecutive query tokens times the
// G query heads of one KV head forms up to kTileRows rows; each block of kKeys keys is decoded once for the whole
// tile (K transposed to [D, kKeys], V as rows), then scores = Q K^T, an online-softmax update per row, and
// O += P V, all register-blocked. The per-token path (attention.cc) decodes every key once per query token and
// reduces each score horizontally; for a chunk of prompt tokens this path does the same arithmetic ~4x faster.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention_problem.h"
#include "simd.h"

namespace cpuk {

constexpr int kKeys = 16;       // keys per block: two 8-lane score vectors per row
constexpr int kTileRows = 48;   // rows (tokens x G) per tile: Q, O (48 x D each) and the block stay in L1
constexpr int64_t kMinTiledTokens = 4;  // a sequence with fewer query tokens in the step takes the per-token path

// A tile's rows, its key block and softmax state.
struct TileScratch {
  std::vector<float> q, o, kt, vb;  // Q [rows, D] pre-scaled, O [rows, D], K^T [D, kKeys], V [kKeys, D]
  alignas(32) float s[kTileRows][kKeys];
  float m[kTileRows], l[kTileRows], corr[kTileRows];
  int64_t pos[kTileRows], lo[kTileRows];
};

// S[r][0:16] = Q[r] . K^T for R rows of Q (row stride d).
template <int R>
inline void tile_scores(const float* q, int64_t d, const float* kt, float (*s)[kKeys]) {
  V8 a[R][2];
  for (auto& row : a) row[0] = row[1] = zero();
  for (int64_t c = 0; c < d; ++c) {
    const V8 k0 = loadf(kt + c * kKeys), k1 = loadf(kt + c * kKeys + 8);
    for (int r = 0; r < R; ++r) {
      const V8 qb = splat(q[r * d + c]);
      a[r][0] = fmadd(qb, k0, a[r][0]);
      a[r][1] = fmadd(qb, k1, a[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) storef(s[r], a[r][0]), storef(s[r] + 8, a[r][1]);
}

// O[r] = O[r] * corr[r] + sum_j P[r][j] V[j] for R rows, 32 output dims at a time (d % 32 == 0).
template <int R>
inline void tile_values(const float (*p)[kKeys], const float* corr, const float* vb, int n, int64_t d, float* o) {
  for (int64_t c0 = 0; c0 < d; c0 += 32) {
    V8 a[R][4];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < 4; ++i) a[r][i] = mul(loadf(o + r * d + c0 + 8 * i), splat(corr[r]));
    for (int j = 0; j < n; ++j) {
      V8 v[4];
      for (int i = 0; i < 4; ++i) v[i] = loadf(vb + j * d + c0 + 8 * i);
      for (int r = 0; r < R; ++r) {
        const V8 pb = splat(p[r][j]);
        for (int i = 0; i < 4; ++i) a[r][i] = fmadd(pb, v[i], a[r][i]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < 4; ++i) storef(o + r * d + c0 + 8 * i, a[r][i]);
  }
}

// Row blocks of 6 (scores) and 3 (values) with the remainder dispatched to a smaller instance.
template <int R>
inline void scores_rows(const float* q, int64_t d, const float* kt, float (*s)[kKeys], int64_t rows) {
  int64_t r = 0;
  for (; r + R <= rows; r += R) tile_scores<R>(q + r * d, d, kt, s + r);
  if constexpr (R > 1) {
    if (r < rows) scores_rows<R - 1>(q + r * d, d, kt, s + r, rows - r);
  }
}

template <int R>
inline void values_rows(const float (*p)[kKeys], const float* corr, const float* vb, int n, int64_t d, float* o,
                        int64_t rows) {
  int64_t r = 0;
  for (; r + R <= rows; r += R) tile_values<R>(p + r, corr + r, vb, n, d, o + r * d);
  if constexpr (R > 1) {
    if (r < rows) values_rows<R - 1>(p + r, corr + r, vb, n, d, o + r * d, rows - r);
  }
}

// Tokens [t0, t0 + nt) of sequence s (consecutive rows of the step, nt * G <= kTileRows), KV head kvh.
inline void run_tile(const Problem& pb, int64_t s, int64_t t0, int64_t nt, int64_t kvh, TileScratch& ts) {
  const int64_t d = pb.d, g = pb.hq / pb.hkv, rows = nt * g;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  ts.q.resize(rows * d), ts.o.assign(rows * d, 0.0f), ts.kt.resize(d * kKeys), ts.vb.resize(kKeys * d);
  int64_t lo_min = std::numeric_limits<int64_t>::max(), lo_max = 0, pos_min = lo_min, pos_max = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = t0 + r / g, h = r % g;
    const float* q = pb.q + (t * pb.hq + kvh * g + h) * d;
    for (int64_t c = 0; c < d; ++c) ts.q[r * d + c] = q[c] * pb.scale;
    ts.pos[r] = pb.positions[t];
    ts.lo[r] = pb.window > 0 ? std::max<int64_t>(0, ts.pos[r] - pb.window + 1) : 0;
    ts.m[r] = neg_inf, ts.l[r] = 0.0f;
    lo_min = std::min(lo_min, ts.lo[r]), lo_max = std::max(lo_max, ts.lo[r]);
    pos_min = std::min(pos_min, ts.pos[r]), pos_max = std::max(pos_max, ts.pos[r]);
  }
  const bool int8 = pb.fmt == KvFmt::kI8;
  alignas(32) float ks[kKeys], vs[kKeys];
  bool present[kKeys];
  float krow[512];  // one decoded key row (d <= 512, checked by the caller)
  for (int64_t j0 = lo_min; j0 <= pos_max; j0 += kKeys) {
    const int n = int(std::min<int64_t>(kKeys, pos_max + 1 - j0));
    // Decode the block: K transposed, V as rows; missing keys (outside the step) are zero with zero scale.
    for (int jj = 0; jj < kKeys; ++jj) {
      const KeyLoc at = jj < n ? locate_key(pb, s, kvh, j0 + jj) : KeyLoc{true, 0, 0, -1};
      const float* kr;
      present[jj] = !(at.is_new && at.new_row < 0);
      float* vr = ts.vb.data() + jj * d;
      if (at.is_new && at.new_row < 0) {
        std::fill(krow, krow + d, 0.0f), std::fill(vr, vr + d, 0.0f);
        kr = krow, ks[jj] = vs[jj] = 0.0f;
      } else if (at.is_new) {
        kr = pb.k_new + at.elem;
        std::copy(pb.v_new + at.elem, pb.v_new + at.elem + d, vr);
        ks[jj] = vs[jj] = 1.0f;
      } else {
        kr = row_f32(pb, pb.k_pages, at.elem, krow);
        const float* v = row_f32(pb, pb.v_pages, at.elem, vr);
        if (v != vr) std::copy(v, v + d, vr);  // float32 rows come in place; the products want V's rows together
        ks[jj] = int8 ? pb.k_scale[at.row] : 1.0f, vs[jj] = int8 ? pb.v_scale[at.row] : 1.0f;
      }
      for (int64_t c = 0; c < d; ++c) ts.kt[c * kKeys + jj] = kr[c];
    }
    scores_rows<6>(ts.q.data(), d, ts.kt.data(), ts.s, rows);
    // Every row sees every key of the block unless the block reaches past the earliest query or below the
    // latest window start.
    bool all_valid = n == kKeys && j0 + n - 1 <= pos_min && j0 >= lo_max;
    for (int jj = 0; jj < n; ++jj) all_valid = all_valid && present[jj];
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = ts.s[r];
      storef(sr, mul(loadf(sr), loadf(ks))), storef(sr + 8, mul(loadf(sr + 8), loadf(ks + 8)));
      if (!all_valid) {
        for (int jj = 0; jj < kKeys; ++jj) {
          const int64_t j = j0 + jj;
          if (jj >= n || !present[jj] || j > ts.pos[r] || j < ts.lo[r]) sr[jj] = neg_inf;
        }
      }
      const float mx = std::max(ts.m[r], hmax(vmax(loadf(sr), loadf(sr + 8))));
      if (std::isinf(mx)) {  // nothing visible to this row yet: no weights, nothing to rescale
        std::fill(sr, sr + kKeys, 0.0f);
        ts.corr[r] = 1.0f;
        continue;
      }
      ts.corr[r] = std::isinf(ts.m[r]) ? 0.0f : std::exp(ts.m[r] - mx);
      const V8 mv = splat(mx);
      const V8 p0 = vexp(sub(loadf(sr), mv)), p1 = vexp(sub(loadf(sr + 8), mv));
      ts.l[r] = ts.l[r] * ts.corr[r] + hsum(add(p0, p1));
      storef(sr, mul(p0, loadf(vs))), storef(sr + 8, mul(p1, loadf(vs + 8)));  // value scales folded in
      ts.m[r] = mx;
    }
    values_rows<3>(ts.s, ts.corr, ts.vb.data(), n, d, ts.o.data(), rows);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = t0 + r / g, h = r % g;
    float* out = pb.out + (t * pb.hq + kvh * g + h) * d;
    const float inv = ts.l[r] > 0 ? 1.0f / ts.l[r] : 0.0f;
    for (int64_t c = 0; c < d; ++c) out[c] = ts.o[r * d + c] * inv;
  }
}

}  // namespace cpuk
