// The packed tile layout of cpu_kernels/packing.py as the matmul kernel reads it: formats, one layer's weight, and
// decoding one tile row into float vectors.
#pragma once

#include <cstdint>

#include "simd.h"

namespace cpuk {

enum class Fmt { kF32, kI8, kU4, kI4 };

constexpr int kTile = 32;  // output channels per tile

struct Weight {
  const uint8_t* values;  // this layer's tiles
  int64_t k, n, tiles;    // n = 32 * tiles (padded channels)
  const void* scales;     // this layer's [G, n], null for float weights
  const void* offsets;    // null when symmetric
  bool f16;
  int64_t groups;
};

constexpr int64_t row_bytes(Fmt f) { return f == Fmt::kF32 ? 4 * kTile : (f == Fmt::kI8 ? kTile : kTile / 2); }

inline const uint8_t* tile_row(const Weight& w, Fmt f, int64_t tile, int64_t kk) {
  return w.values + (tile * w.k + kk) * row_bytes(f);
}

// How far ahead of the tile row being decoded the weight stream is prefetched. The hardware prefetchers alone left
// the few-row loops at about two thirds of the read bandwidth on the 2-core VMs (int8 decode step of the default
// model: 21.9 -> 16.5 ms with 4 KiB ahead; 512 B ahead gained little).
constexpr int64_t kPrefetchBytes = 4096;

template <Fmt F>
inline void prefetch_ahead(const uint8_t* row) {
  __builtin_prefetch(row + kPrefetchBytes);
  if constexpr (F == Fmt::kF32) __builtin_prefetch(row + kPrefetchBytes + 64);  // a float row spans two lines
}

inline V8 vec_at(const void* p, int64_t i, bool f16) {
  return f16 ? load_f16(static_cast<const uint16_t*>(p) + i) : loadf(static_cast<const float*>(p) + i);
}

// Vector v (0..3) of a tile row covers channels [8 v, 8 v + 8) of the tile. Sub-tile `sub` of width TW vectors
// (TW = 2: sub 0 = vectors {0, 1}, sub 1 = {2, 3}; TW = 4: all) decodes into v[0..TW).
template <Fmt F, int TW>
inline void decode(const uint8_t* row, int sub, V8 (&v)[TW]) {
  if constexpr (F == Fmt::kF32) {
    for (int i = 0; i < TW; ++i) v[i] = loadf(reinterpret_cast<const float*>(row) + 8 * (sub * TW + i));
  } else if constexpr (F == Fmt::kI8) {
    for (int i = 0; i < TW; ++i) v[i] = load_i8(reinterpret_cast<const int8_t*>(row) + 8 * (sub * TW + i));
  } else {
    // Bytes [8 j, 8 j + 8) hold channels 8 j.. (low) and 16 + 8 j.. (high): vectors j and j + 2.
    V8 lo[2], hi[2];
    const int first = TW == 4 ? 0 : sub, count = TW == 4 ? 2 : 1;
    for (int j = 0; j < count; ++j) {
      if constexpr (F == Fmt::kU4) load_u4(row + 8 * (first + j), lo[j], hi[j]);
      else load_i4(reinterpret_cast<const int8_t*>(row) + 8 * (first + j), lo[j], hi[j]);
    }
    if constexpr (TW == 4) v[0] = lo[0], v[1] = lo[1], v[2] = hi[0], v[3] = hi[1];
    else v[0] = lo[0], v[1] = hi[0];
  }
}

// The tile channel (0..31) of vector i of sub-tile `sub`.
template <Fmt F, int TW>
inline int channel(int sub, int i) {
  if constexpr (F == Fmt::kU4 || F == Fmt::kI4) {
    if constexpr (TW == 4) return i < 2 ? 8 * i : 16 + 8 * (i - 2);
    return i == 0 ? 8 * sub : 16 + 8 * sub;
  }
  return 8 * (sub * TW + i);
}

}  // namespace cpuk
