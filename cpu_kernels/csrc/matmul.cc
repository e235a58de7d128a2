// y = x @ W for float32, int8 and 4-bit weights in the packed tile layout of cpu_kernels/packing.py, dequantized
// in registers: a quantized weight is read once, at its stored size, as one sequential stream per thread.
//
//   values  [L, T, K, C]   T tiles of 32 output channels; C = 32 values per row (float32 / int8), or 16 bytes for
//                          4 bits, byte b holding channel b (low nibble) and channel b + 16 (high nibble)
//   scales  [L, G, 32 T]   float32 or float16, G groups along K (absent for float32 weights)
//   offsets [L, G, 32 T]   like scales, or absent (symmetric)
//   y       [M, 32 T]   rows from `valid_rows` on (a bucket's padding) are not computed and come out zero
// The layer axis L is indexed by the `layer` operand, so a layer scan reads the stacked weights in place.
// Small M runs a fused loop (decode a row of the tile, multiply-add it into every row of x); large M first
// dequantizes a whole tile into a thread-local float buffer and then runs a register-blocked float kernel on it.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "block512.h"
#include "fused512.h"
#include "simd.h"
#include "tiles.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace cpuk {
namespace {

// Below this many rows of x, the fused loop; from it, decode-then-multiply. A float tile needs no decoding, so the
// blocked kernel wins from 8 rows; a quantized tile's dequantized copy only pays off from ~32 rows with the
// one-pass AVX-512 fused loop (default-model int8 decode step: 8 rows 46.5 -> 32.8 ms, 16 rows 73 -> 62 ms fused;
// at 32 rows level). The eight-lane fused loop splits the tile in halves, so it keeps 8 for every format.
constexpr int64_t fused_rows(Fmt f) { return CPUK_AVX512 && f != Fmt::kF32 ? 32 : 8; }

// ---- small M: fused ----

// R rows of x times one sub-tile. Grouped weights keep partial sums per group and fold in the group's scale (and
// offset times the group's sum of x) at the group's end: one multiply per group instead of one per weight.
template <Fmt F, int R, int TW, bool kGrouped>
void fused(const Weight& w, const float* x, const float* xsum, float* y, int64_t tile, int sub) {
  int64_t ch[TW];
  for (int i = 0; i < TW; ++i) ch[i] = tile * kTile + channel<F, TW>(sub, i);
  V8 acc[R][TW];
  for (auto& row : acc) for (auto& a : row) a = zero();
  const int64_t gs = kGrouped ? w.k / w.groups : w.k;
  for (int64_t g = 0; g < (kGrouped ? w.groups : 1); ++g) {
    V8 part[R][TW];
    for (auto& row : part) for (auto& a : row) a = zero();
    for (int64_t kk = g * gs; kk < (g + 1) * gs; ++kk) {
      V8 v[TW];
      prefetch_ahead<F>(tile_row(w, F, tile, kk));
      decode<F, TW>(tile_row(w, F, tile, kk), sub, v);
      for (int r = 0; r < R; ++r) {
        const V8 xb = splat(x[r * w.k + kk]);
        for (int i = 0; i < TW; ++i) part[r][i] = fmadd(xb, v[i], part[r][i]);
      }
    }
    if constexpr (kGrouped) {
      for (int i = 0; i < TW; ++i) {
        const V8 s = vec_at(w.scales, g * w.n + ch[i], w.f16);
        for (int r = 0; r < R; ++r) acc[r][i] = fmadd(part[r][i], s, acc[r][i]);
        if (w.offsets != nullptr) {
          const V8 o = vec_at(w.offsets, g * w.n + ch[i], w.f16);
          for (int r = 0; r < R; ++r) acc[r][i] = fmadd(splat(xsum[r * w.groups + g]), o, acc[r][i]);
        }
      }
    } else {
      for (int r = 0; r < R; ++r) for (int i = 0; i < TW; ++i) acc[r][i] = part[r][i];
    }
  }
  if (!kGrouped && w.scales != nullptr) {
    for (int i = 0; i < TW; ++i) {
      const V8 s = vec_at(w.scales, ch[i], w.f16);
      for (int r = 0; r < R; ++r) acc[r][i] = mul(acc[r][i], s);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < TW; ++i) storef(y + r * w.n + ch[i], acc[r][i]);
}

template <Fmt F, bool kGrouped>
void fused_tile(const Weight& w, const float* x, const float* xsum, float* y, int64_t m, int64_t tile) {
#if CPUK_AVX512
  return fused512_tile<F, kGrouped>(w, x, xsum, y, m, tile);
#endif
  if (m == 1) return fused<F, 1, 4, kGrouped>(w, x, xsum, y, tile, 0);
  for (int sub = 0; sub < 2; ++sub) {
    int64_t r = 0;
    constexpr int kR = kGrouped ? 3 : 6;
    for (; r + kR <= m; r += kR) fused<F, kR, 2, kGrouped>(w, x + r * w.k, xsum + r * w.groups, y + r * w.n, tile, sub);
    const float* xr = x + r * w.k;
    const float* sr = xsum + r * w.groups;
    float* yr = y + r * w.n;
    switch (m - r) {
      case 1: fused<F, 1, 2, kGrouped>(w, xr, sr, yr, tile, sub); break;
      case 2: fused<F, 2, 2, kGrouped>(w, xr, sr, yr, tile, sub); break;
      case 3: if constexpr (kR > 3) fused<F, 3, 2, kGrouped>(w, xr, sr, yr, tile, sub); break;
      case 4: if constexpr (kR > 4) fused<F, 4, 2, kGrouped>(w, xr, sr, yr, tile, sub); break;
      case 5: if constexpr (kR > 5) fused<F, 5, 2, kGrouped>(w, xr, sr, yr, tile, sub); break;
      default: break;
    }
  }
}

// ---- large M: dequantize the tile once, then a register-blocked float kernel ----

// The tile as floats [K, 32], scales and offsets applied. Group by group, so each group's scales (and offsets) are
// loaded once and no row pays for finding its group.
template <Fmt F>
void dequantize_tile(const Weight& w, int64_t tile, float* buf) {
  const int64_t gs = w.k / w.groups;
  for (int64_t g = 0; g < w.groups; ++g) {
    V8 s[4], o[4];
    for (int i = 0; i < 4; ++i) {
      const int64_t at = g * w.n + tile * kTile + channel<F, 4>(0, i);
      s[i] = vec_at(w.scales, at, w.f16);
      o[i] = w.offsets ? vec_at(w.offsets, at, w.f16) : zero();
    }
    for (int64_t kk = g * gs; kk < (g + 1) * gs; ++kk) {
      V8 v[4];
      prefetch_ahead<F>(tile_row(w, F, tile, kk));
      decode<F, 4>(tile_row(w, F, tile, kk), 0, v);
      for (int i = 0; i < 4; ++i) storef(buf + kk * kTile + channel<F, 4>(0, i), fmadd(v[i], s[i], o[i]));
    }
  }
}

// R rows x 16 channels (vectors `half` * 2, +1) of a float tile `wt` [K, 32].
template <int R>
void block(const float* wt, int64_t k, const float* x, float* y, int64_t ldy, int half) {
  V8 acc[R][2];
  for (auto& row : acc) for (auto& a : row) a = zero();
  const float* col = wt + 16 * half;
  for (int64_t kk = 0; kk < k; ++kk) {
    const V8 w0 = loadf(col + kk * kTile), w1 = loadf(col + kk * kTile + 8);
    for (int r = 0; r < R; ++r) {
      const V8 xb = splat(x[r * k + kk]);
      acc[r][0] = fmadd(xb, w0, acc[r][0]);
      acc[r][1] = fmadd(xb, w1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    storef(y + r * ldy + 16 * half, acc[r][0]);
    storef(y + r * ldy + 16 * half + 8, acc[r][1]);
  }
}


template <Fmt F>
void blocked_tile(const Weight& w, const float* x, float* y, int64_t m, int64_t tile, std::vector<float>& buf) {
  const float* wt;
  if constexpr (F == Fmt::kF32) {
    wt = reinterpret_cast<const float*>(tile_row(w, F, tile, 0));
  } else {
    buf.resize(w.k * kTile);
    dequantize_tile<F>(w, tile, buf.data());
    wt = buf.data();
  }
  float* yt = y + tile * kTile;
#if CPUK_AVX512
  for (int64_t k0 = 0; k0 < w.k; k0 += kDepthBlock) {
    const int64_t kc = std::min(kDepthBlock, w.k - k0);
    int64_t r = 0;
    for (; r + 12 <= m; r += 12)
      block512<12>(wt + k0 * kTile, kc, x + r * w.k + k0, w.k, yt + r * w.n, w.n, k0 == 0, r == 0);
    if (r < m) blocks512<11>(wt + k0 * kTile, kc, x + r * w.k + k0, w.k, yt + r * w.n, w.n, k0 == 0, r == 0, m - r);
  }
  return;
#endif
  for (int half = 0; half < 2; ++half) {
    int64_t r = 0;
    for (; r + 6 <= m; r += 6) block<6>(wt, w.k, x + r * w.k, yt + r * w.n, w.n, half);
    const float* xr = x + r * w.k;
    float* yr = yt + r * w.n;
    switch (m - r) {
      case 1: block<1>(wt, w.k, xr, yr, w.n, half); break;
      case 2: block<2>(wt, w.k, xr, yr, w.n, half); break;
      case 3: block<3>(wt, w.k, xr, yr, w.n, half); break;
      case 4: block<4>(wt, w.k, xr, yr, w.n, half); break;
      case 5: block<5>(wt, w.k, xr, yr, w.n, half); break;
      default: break;
    }
  }
}

// ---- driver ----

constexpr int64_t kRowsPerPass = 96;  // rows of x kept hot (L2) while a thread walks its tiles

template <Fmt F>
void run(ffi::ThreadPool& pool, const Weight& w, const float* x, float* y, int64_t m) {
  const bool grouped = w.scales != nullptr && (w.groups > 1 || w.offsets != nullptr);
  const bool blocked = m >= fused_rows(F);
  std::vector<float> xsum(1, 0.0f);
  if (grouped && !blocked) {  // per-group sums of x, for the offsets
    xsum.assign(m * w.groups, 0.0f);
    const int64_t gs = w.k / w.groups;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t kk = 0; kk < w.k; ++kk) xsum[r * w.groups + kk / gs] += x[r * w.k + kk];
  }
  const int64_t rows_per_pass = blocked ? kRowsPerPass : m;
  const int64_t work_per_tile = std::min(m, rows_per_pass) * w.k * kTile;
  const int64_t chunks = num_chunks(pool, w.tiles, (1 << 16) / std::max<int64_t>(work_per_tile, 1) + 1);
  for (int64_t r0 = 0; r0 < m; r0 += rows_per_pass) {
    const int64_t rows = std::min(rows_per_pass, m - r0);
    const float* xr = x + r0 * w.k;
    float* yr = y + r0 * w.n;
    parallel_for(pool, chunks, [&](int64_t c) {
      std::vector<float> buf;
      for (int64_t t = w.tiles * c / chunks; t < w.tiles * (c + 1) / chunks; ++t) {
        if (blocked) blocked_tile<F>(w, xr, yr, rows, t, buf);
        else if (grouped) fused_tile<F, true>(w, xr, xsum.data(), yr, rows, t);
        else fused_tile<F, false>(w, xr, xsum.data(), yr, rows, t);
      }
    });
  }
}

ffi::Error MatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer values, ffi::AnyBuffer scales,
                      ffi::AnyBuffer offsets, ffi::Buffer<ffi::S32> layer, ffi::Buffer<ffi::S32> valid_rows,
                      ffi::ResultBuffer<ffi::F32> y, int64_t bits, bool has_scales, bool has_offsets) {
  const auto xd = x.dimensions(), vd = values.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || vd.size() != 4 || yd.size() != 2)
    return ffi::Error::InvalidArgument("matmul: x must be [M, K], values [L, T, K, C], y [M, N]");
  const auto vt = values.element_type();
  Fmt fmt;
  if (bits == 32 && vt == ffi::DataType::F32) fmt = Fmt::kF32;
  else if (bits == 8 && vt == ffi::DataType::S8) fmt = Fmt::kI8;
  else if (bits == 4 && vt == ffi::DataType::U8) fmt = Fmt::kU4;
  else if (bits == 4 && vt == ffi::DataType::S8) fmt = Fmt::kI4;
  else return ffi::Error::InvalidArgument("matmul: unsupported weight format (bits and values dtype)");
  if (bits != 32 && !has_scales) return ffi::Error::InvalidArgument("matmul: integer weights need scales");
  const int64_t num_layers = vd[0];
  int64_t m = xd[0];
  Weight w{};
  w.tiles = vd[1], w.k = vd[2], w.n = kTile * vd[1], w.groups = 1;
  if (vd[3] * int64_t(ffi::ByteWidth(vt)) != row_bytes(fmt) || xd[1] != w.k || yd[0] != m || yd[1] != w.n)
    return ffi::Error::InvalidArgument("matmul: x, values and y shapes disagree");
  const int32_t li = *layer.typed_data();
  if (li < 0 || li >= num_layers) return ffi::Error::InvalidArgument("matmul: layer index out of range");
  w.values = static_cast<const uint8_t*>(values.untyped_data()) + li * (int64_t)values.size_bytes() / num_layers;
  if (has_scales) {
    const auto sd = scales.dimensions();
    if (sd.size() != 3 || sd[0] != num_layers || sd[2] != w.n || sd[1] <= 0 || w.k % sd[1])
      return ffi::Error::InvalidArgument("matmul: scales must be [L, G, N] with G dividing K");
    w.groups = sd[1];
    w.f16 = scales.element_type() == ffi::DataType::F16;
    if (!w.f16 && scales.element_type() != ffi::DataType::F32)
      return ffi::Error::InvalidArgument("matmul: scales must be float16 or float32");
    const int64_t layer_scales = (int64_t)scales.size_bytes() / num_layers;
    w.scales = static_cast<const uint8_t*>(scales.untyped_data()) + li * layer_scales;
    if (has_offsets) {
      if (offsets.element_type() != scales.element_type() || offsets.size_bytes() != scales.size_bytes())
        return ffi::Error::InvalidArgument("matmul: offsets must match the scales");
      w.offsets = static_cast<const uint8_t*>(offsets.untyped_data()) + li * layer_scales;
    }
  }
  const float* xp = x.typed_data();
  float* yp = y->typed_data();
  // Rows from `valid_rows` on are a bucket's padding: not computed, their outputs zero.
  const int64_t rows = std::clamp<int64_t>(*valid_rows.typed_data(), 0, m);
  std::fill(yp + rows * w.n, yp + m * w.n, 0.0f);
  m = rows;
  switch (fmt) {
    case Fmt::kF32: run<Fmt::kF32>(pool, w, xp, yp, m); break;
    case Fmt::kI8: run<Fmt::kI8>(pool, w, xp, yp, m); break;
    case Fmt::kU4: run<Fmt::kU4>(pool, w, xp, yp, m); break;
    case Fmt::kI4: run<Fmt::kI4>(pool, w, xp, yp, m); break;
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace cpuk

XLA_FFI_DEFINE_HANDLER_SYMBOL(cpuk_matmul, cpuk::MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::AnyBuffer>()         // values
                                  .Arg<ffi::AnyBuffer>()         // scales
                                  .Arg<ffi::AnyBuffer>()         // offsets
                                  .Arg<ffi::Buffer<ffi::S32>>()  // layer
                                  .Arg<ffi::Buffer<ffi::S32>>()  // valid_rows
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("bits")
                                  .Attr<bool>("has_scales")
                                  .Attr<bool>("has_offsets"));

extern "C" int cpuk_simd() { return CPUK_SIMD; }
