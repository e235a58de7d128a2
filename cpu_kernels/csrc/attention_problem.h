// The attention kernel's problem description (shared by the per-token and the tiled paths) and key/value row
// decoding from the page formats.
#pragma once

#include <cstdint>

#include "simd.h"

namespace cpuk {

enum class KvFmt { kF32, kBF16, kI8 };

struct Problem {
  const float* q;      // [T, Hq, D], pre-scaled copy is made per item
  const float* k_new;  // [T, Hkv, D]
  const float* v_new;
  const uint8_t* k_pages;  // this layer: [Hkv, NB, B, D]
  const uint8_t* v_pages;
  const float* k_scale;  // this layer: [Hkv, NB, B] (int8 pages only)
  const float* v_scale;
  const int32_t* block_tables;  // [S, W]
  const int32_t* context_lens;  // [S]
  const int32_t* query_start;   // [S + 1]
  const int32_t* token_seq;     // [T]
  const int32_t* positions;     // [T]
  float* out;                   // [T, Hq, D]
  int64_t num_tokens, valid_tokens, hq, hkv, d, nb, bs, num_seqs, width;
  float scale;
  int64_t window;
  KvFmt fmt;
};

inline int64_t kv_elem_bytes(KvFmt f) { return f == KvFmt::kF32 ? 4 : (f == KvFmt::kBF16 ? 2 : 1); }

// One key (or value) row of the pages as floats: float32 rows in place, other formats decoded into `buf`.
inline const float* row_f32(const Problem& pb, const uint8_t* base, int64_t elem, float* buf) {
  switch (pb.fmt) {
    case KvFmt::kF32:
      return reinterpret_cast<const float*>(base) + elem;
    case KvFmt::kBF16: {
      const uint16_t* p = reinterpret_cast<const uint16_t*>(base) + elem;
      for (int64_t c = 0; c < pb.d; c += 8) storef(buf + c, load_bf16(p + c));
      return buf;
    }
    case KvFmt::kI8: {
      const int8_t* p = reinterpret_cast<const int8_t*>(base) + elem;
      for (int64_t c = 0; c < pb.d; c += 8) storef(buf + c, load_i8(p + c));
      return buf;
    }
  }
  return nullptr;
}

// Where key position j of sequence s lives for KV head kvh: a page row (`elem` into the pages, with its int8 scale
// `row`) or, from the context length on, this step's new row `new_row` (-1 if outside the step's tokens).
struct KeyLoc {
  bool is_new;
  int64_t elem, row, new_row;
};

inline KeyLoc locate_key(const Problem& pb, int64_t s, int64_t kvh, int64_t j) {
  const int64_t ctx = pb.context_lens[s];
  if (j < ctx) {
    const int64_t slot = j / pb.bs;
    int64_t page = slot < pb.width ? pb.block_tables[s * pb.width + slot] : 0;
    if (page < 0 || page >= pb.nb) page = 0;  // never read outside the pool, whatever the table says
    const int64_t row = (kvh * pb.nb + page) * pb.bs + j % pb.bs;
    return {false, row * pb.d, row, -1};
  }
  const int64_t r = pb.query_start[s] + (j - ctx);
  if (r < 0 || r >= pb.num_tokens) return {true, 0, 0, -1};
  return {true, (r * pb.hkv + kvh) * pb.d, 0, r};
}

}  // namespace cpuk
