// Paged attention for packed queries (prefill chunks, decode tokens, or both in one step), read from the pages in
// place through the block tables: no gathered copy of K/V is ever made.
//
// Token t of sequence s at position p attends to keys [lo, p] of s (lo = p - window + 1 with a sliding window):
// keys below s's context length come from its pages ([L, Hkv, blocks, block_size, D], float32, bfloat16 bits or
// int8 with per-token scales [L, Hkv, blocks, block_size]); later keys are this step's own new K/V rows, exact.
// One work item is a (token, KV head) pair: the G query heads that share the KV head read each key once.
// A sequence with several query tokens in the step (a prompt chunk) goes by tiles instead: attention_tiled.h.
// The softmax is online (running max and normaliser), over blocks of up to 16 keys.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention_problem.h"
#include "attention_tiled.h"
#include "parallel.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace cpuk {
namespace {

constexpr int kBlock = 16;  // keys per softmax update

// Scratch per item: scaled queries [G, D], accumulators [G, D], decoded K and V rows [kBlock, D] each.
struct Item {
  const Problem& pb;
  int64_t g;       // query heads per KV head
  float* qs;       // [G, D]
  float* acc;      // [G, D]
  float* kbuf;     // [kBlock, D]
  float* vbuf;     // [kBlock, D]
  float m[64], l[64];  // running max and normaliser per query head (G <= 64, checked)

  // Keys of a block: pointers to their (page or new) rows plus their int8 scales (1 for float rows).
  struct Key { const uint8_t* kbase; const uint8_t* vbase; int64_t elem; float ks, vs; bool is_new; };

  // One online-softmax update over n <= kBlock keys. Scores come 8 keys at a time (one accumulator per key, one
  // transposed horizontal sum), and the accumulators stay in registers across the block's values.
  void attend(const Key* keys, int n) {
    const int64_t d = pb.d;
    const float* kr[kBlock];
    const float* vr[kBlock];
    alignas(32) float ks[kBlock], vs[kBlock];
    // All K rows, then all V rows (decoded ones: two sequential streams, not one alternating between them).
    for (int j = 0; j < n; ++j) {
      const Key& key = keys[j];
      kr[j] = key.is_new ? reinterpret_cast<const float*>(key.kbase) + key.elem
                         : row_f32(pb, key.kbase, key.elem, kbuf + j * d);
      ks[j] = key.ks, vs[j] = key.vs;
    }
    for (int j = 0; j < n; ++j) {
      const Key& key = keys[j];
      vr[j] = key.is_new ? reinterpret_cast<const float*>(key.vbase) + key.elem
                         : row_f32(pb, key.vbase, key.elem, vbuf + j * d);
    }
    for (int j = n; j < kBlock; ++j) kr[j] = kr[0], vr[j] = vr[0], ks[j] = vs[j] = 0.0f;  // masked below
    alignas(32) float sc[64][kBlock];
    alignas(32) float corr[64];
    const float neg_inf = -std::numeric_limits<float>::infinity();
    for (int64_t h = 0; h < g; ++h) {
      const float* qh = qs + h * d;
      for (int j0 = 0; j0 < kBlock; j0 += 8) {
        if (j0 >= n) {
          storef(sc[h] + j0, splat(neg_inf));
          continue;
        }
        V8 a[8];
        for (auto& x : a) x = zero();
        for (int64_t c = 0; c < d; c += 8) {
          const V8 qv = loadf(qh + c);
          for (int jj = 0; jj < 8; ++jj) a[jj] = fmadd(qv, loadf(kr[j0 + jj] + c), a[jj]);
        }
        storef(sc[h] + j0, mul(hsum8(a), loadf(ks + j0)));
      }
      for (int j = n; j < kBlock; ++j) sc[h][j] = neg_inf;
      float mx = m[h];
      for (int j = 0; j < n; ++j) mx = std::max(mx, sc[h][j]);
      corr[h] = std::isinf(m[h]) ? 0.0f : std::exp(m[h] - mx);
      const V8 mv = splat(mx);
      const V8 p0 = vexp(sub(loadf(sc[h]), mv)), p1 = vexp(sub(loadf(sc[h] + 8), mv));
      l[h] = l[h] * corr[h] + hsum(add(p0, p1));
      storef(sc[h], mul(p0, loadf(vs)));  // value scales folded into the weights
      storef(sc[h] + 8, mul(p1, loadf(vs + 8)));
      m[h] = mx;
    }
    for (int64_t c = 0; c < d; c += 8) {
      for (int64_t h = 0; h < g; ++h) {
        V8 o = mul(loadf(acc + h * d + c), splat(corr[h]));
        for (int j = 0; j < n; ++j) o = fmadd(splat(sc[h][j]), loadf(vr[j] + c), o);
        storef(acc + h * d + c, o);
      }
    }
  }
};

void run_item(const Problem& pb, int64_t t, int64_t kvh, std::vector<float>& scratch) {
  const int64_t d = pb.d, g = pb.hq / pb.hkv;
  float* out = pb.out + (t * pb.hq + kvh * g) * d;
  if (t >= pb.valid_tokens) {
    std::fill(out, out + g * d, 0.0f);
    return;
  }
  scratch.resize(2 * g * d + 2 * kBlock * d);
  float* base = scratch.data();
  Item it{pb, g, base, base + g * d, base + 2 * g * d, base + 2 * g * d + kBlock * d};
  const float* q = pb.q + (t * pb.hq + kvh * g) * d;
  for (int64_t i = 0; i < g * d; ++i) it.qs[i] = q[i] * pb.scale;
  std::fill(it.acc, it.acc + g * d, 0.0f);
  for (int64_t h = 0; h < g; ++h) it.m[h] = -std::numeric_limits<float>::infinity(), it.l[h] = 0.0f;

  const int64_t s = pb.token_seq[t];
  if (s < 0 || s >= pb.num_seqs) {
    std::fill(out, out + g * d, 0.0f);
    return;
  }
  const int64_t pos = pb.positions[t], ctx = pb.context_lens[s], qstart = pb.query_start[s];
  const int64_t lo = pb.window > 0 ? std::max<int64_t>(0, pos - pb.window + 1) : 0;
  const int32_t* table = pb.block_tables + s * pb.width;
  const bool int8 = pb.fmt == KvFmt::kI8;
  Item::Key keys[kBlock];
  int n = 0;
  // The key's page slot and offset advance with j (no division per key).
  int64_t slot = lo / pb.bs, offset = lo % pb.bs, page = -1;
  // The page one slot ahead is prefetched a key row at a time while this page's keys are gathered: every page is
  // its own few-KiB region, which the hardware prefetchers do not run into (the per-token items stalled on each
  // new page; decode steps of 16-48 sequences at context 360 on the 2-core VM: -10-20%).
  const int64_t row_bytes = d * kv_elem_bytes(pb.fmt);
  const uint8_t* ahead_k = nullptr;
  const uint8_t* ahead_v = nullptr;
  for (int64_t j = lo; j <= pos; ++j, offset = offset + 1 == pb.bs ? (++slot, 0) : offset + 1) {
    Item::Key& key = keys[n];
    if (j < ctx) {
      if (offset == 0 || page < 0) {
        page = slot < pb.width ? table[slot] : 0;
        if (page < 0 || page >= pb.nb) page = 0;  // never read outside the pool, whatever the table says
        const int64_t next = slot + 1 < pb.width && (slot + 1) * pb.bs < ctx ? table[slot + 1] : -1;
        ahead_k = ahead_v = nullptr;
        if (next >= 0 && next < pb.nb) {
          const int64_t at = (kvh * pb.nb + next) * pb.bs * row_bytes;
          ahead_k = pb.k_pages + at, ahead_v = pb.v_pages + at;
        }
      }
      if (ahead_k != nullptr) {
        for (int64_t b = offset * row_bytes; b < (offset + 1) * row_bytes; b += 64) {
          __builtin_prefetch(ahead_k + b);
          __builtin_prefetch(ahead_v + b);
        }
      }
      const int64_t row = (kvh * pb.nb + page) * pb.bs + offset;
      key = {pb.k_pages, pb.v_pages, row * d, int8 ? pb.k_scale[row] : 1.0f, int8 ? pb.v_scale[row] : 1.0f,
             false};
    } else {
      const int64_t r = qstart + (j - ctx);
      if (r < 0 || r >= pb.num_tokens) continue;
      const int64_t elem = (r * pb.hkv + kvh) * d;
      key = {reinterpret_cast<const uint8_t*>(pb.k_new), reinterpret_cast<const uint8_t*>(pb.v_new), elem, 1.0f,
             1.0f, true};
    }
    if (++n == kBlock) it.attend(keys, n), n = 0;
  }
  if (n) it.attend(keys, n);
  for (int64_t h = 0; h < g; ++h) {
    const float inv = it.l[h] > 0 ? 1.0f / it.l[h] : 0.0f;
    for (int64_t c = 0; c < d; ++c) out[h * d + c] = it.acc[h * d + c] * inv;
  }
}

ffi::Error AttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k_new,
                         ffi::Buffer<ffi::F32> v_new, ffi::AnyBuffer k_pages, ffi::AnyBuffer v_pages,
                         ffi::Buffer<ffi::F32> k_scale, ffi::Buffer<ffi::F32> v_scale, ffi::Buffer<ffi::S32> layer,
                         ffi::Buffer<ffi::S32> block_tables, ffi::Buffer<ffi::S32> context_lens,
                         ffi::Buffer<ffi::S32> query_start_loc, ffi::Buffer<ffi::S32> token_seq,
                         ffi::Buffer<ffi::S32> positions, ffi::Buffer<ffi::S32> num_tokens,
                         ffi::ResultBuffer<ffi::F32> out, float scale, int64_t sliding_window) {
  const auto qd = q.dimensions(), pd = k_pages.dimensions(), bd = block_tables.dimensions();
  if (qd.size() != 3 || pd.size() != 5 || bd.size() != 2)
    return ffi::Error::InvalidArgument("paged_attention: q [T, Hq, D], pages [L, Hkv, NB, B, D], tables [S, W]");
  Problem pb{};
  pb.num_tokens = qd[0], pb.hq = qd[1], pb.d = qd[2];
  const int64_t num_layers = pd[0];
  pb.hkv = pd[1], pb.nb = pd[2], pb.bs = pd[3];
  pb.num_seqs = bd[0], pb.width = bd[1];
  if (pd[4] != pb.d || pb.d % 8 || pb.hkv <= 0 || pb.hq % pb.hkv || pb.hq / pb.hkv > 64)
    return ffi::Error::InvalidArgument("paged_attention: head_dim must be a multiple of 8 and match the pages; "
                                       "query heads a multiple of KV heads (at most 64 per KV head)");
  if (k_new.dimensions()[0] != pb.num_tokens || k_new.dimensions()[1] != pb.hkv ||
      context_lens.dimensions()[0] != pb.num_seqs || query_start_loc.dimensions()[0] != pb.num_seqs + 1 ||
      token_seq.dimensions()[0] != pb.num_tokens || positions.dimensions()[0] != pb.num_tokens ||
      v_pages.element_count() != k_pages.element_count() || v_pages.element_type() != k_pages.element_type())
    return ffi::Error::InvalidArgument("paged_attention: metadata shapes disagree");
  const auto et = k_pages.element_type();
  if (et == ffi::DataType::F32) pb.fmt = KvFmt::kF32;
  else if (et == ffi::DataType::U16 || et == ffi::DataType::BF16) pb.fmt = KvFmt::kBF16;
  else if (et == ffi::DataType::S8) pb.fmt = KvFmt::kI8;
  else return ffi::Error::InvalidArgument("paged_attention: pages must be float32, bfloat16 (or uint16) or int8");
  const int32_t li = *layer.typed_data();
  if (li < 0 || li >= num_layers) return ffi::Error::InvalidArgument("paged_attention: layer out of range");
  const int64_t layer_elems = pb.hkv * pb.nb * pb.bs * pb.d;
  const int64_t width = ffi::ByteWidth(et);
  pb.k_pages = static_cast<const uint8_t*>(k_pages.untyped_data()) + li * layer_elems * width;
  pb.v_pages = static_cast<const uint8_t*>(v_pages.untyped_data()) + li * layer_elems * width;
  if (pb.fmt == KvFmt::kI8) {
    if ((int64_t)k_scale.element_count() != num_layers * pb.hkv * pb.nb * pb.bs ||
        v_scale.element_count() != k_scale.element_count())
      return ffi::Error::InvalidArgument("paged_attention: int8 pages need scales [L, Hkv, NB, B]");
    pb.k_scale = k_scale.typed_data() + li * pb.hkv * pb.nb * pb.bs;
    pb.v_scale = v_scale.typed_data() + li * pb.hkv * pb.nb * pb.bs;
  }
  pb.q = q.typed_data(), pb.k_new = k_new.typed_data(), pb.v_new = v_new.typed_data();
  pb.block_tables = block_tables.typed_data(), pb.context_lens = context_lens.typed_data();
  pb.query_start = query_start_loc.typed_data(), pb.token_seq = token_seq.typed_data();
  pb.positions = positions.typed_data(), pb.out = out->typed_data();
  pb.valid_tokens = std::min<int64_t>(*num_tokens.typed_data(), pb.num_tokens);
  pb.scale = scale, pb.window = sliding_window;

  // Work: a sequence with kMinTiledTokens or more query tokens in the step goes by tiles of its tokens (per KV
  // head); every other token (decodes, padding, short chunks) is a per-token item. Tiles first, longest context
  // first, so the threads' claims balance out.
  const int64_t g = pb.hq / pb.hkv;
  const bool can_tile = pb.d % 32 == 0 && pb.d <= 512;
  const int64_t tile_tokens = std::max<int64_t>(1, kTileRows / g);
  struct Tile { int64_t seq, t0, nt, kvh, cost; };
  std::vector<Tile> tiles;
  std::vector<char> tiled(pb.num_tokens, 0);
  for (int64_t s = 0; can_tile && s < pb.num_seqs; ++s) {
    const int64_t a = std::clamp<int64_t>(pb.query_start[s], 0, pb.valid_tokens);
    const int64_t b = std::clamp<int64_t>(pb.query_start[s + 1], a, pb.valid_tokens);
    if (b - a < kMinTiledTokens) continue;
    bool own = true;  // the tile path assumes the rows [a, b) are this sequence's, as query_start says
    for (int64_t t = a; t < b && own; ++t) own = pb.token_seq[t] == s;
    if (!own) continue;
    for (int64_t t0 = a; t0 < b; t0 += tile_tokens) {
      const int64_t nt = std::min(tile_tokens, b - t0);
      for (int64_t kvh = 0; kvh < pb.hkv; ++kvh) tiles.push_back({s, t0, nt, kvh, pb.positions[t0 + nt - 1]});
    }
    std::fill(tiled.begin() + a, tiled.begin() + b, 1);
  }
  std::stable_sort(tiles.begin(), tiles.end(), [](const Tile& x, const Tile& y) { return x.cost > y.cost; });
  std::vector<int64_t> singles;
  for (int64_t t = 0; t < pb.num_tokens; ++t)
    if (!tiled[t]) singles.push_back(t);
  const int64_t items = int64_t(singles.size()) * pb.hkv;
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t chunks = std::min<int64_t>(items, 8 * threads);
  const int64_t num_tiles = tiles.size();
  parallel_for(pool, num_tiles + chunks, [&](int64_t c) {
    if (c < num_tiles) {
      TileScratch ts;
      const Tile& tile = tiles[c];
      return run_tile(pb, tile.seq, tile.t0, tile.nt, tile.kvh, ts);
    }
    c -= num_tiles;
    std::vector<float> scratch;
    for (int64_t i = items * c / chunks; i < items * (c + 1) / chunks; ++i)
      run_item(pb, singles[i / pb.hkv], i % pb.hkv, scratch);
  });
  return ffi::Error::Success();
}

}  // namespace
}  // namespace cpuk

XLA_FFI_DEFINE_HANDLER_SYMBOL(cpuk_paged_attention, cpuk::AttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k_new
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v_new
                                  .Arg<ffi::AnyBuffer>()          // k_pages
                                  .Arg<ffi::AnyBuffer>()          // v_pages
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k_scale
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v_scale
                                  .Arg<ffi::Buffer<ffi::S32>>()   // layer
                                  .Arg<ffi::Buffer<ffi::S32>>()   // block_tables
                                  .Arg<ffi::Buffer<ffi::S32>>()   // context_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()   // query_start_loc
                                  .Arg<ffi::Buffer<ffi::S32>>()   // token_seq
                                  .Arg<ffi::Buffer<ffi::S32>>()   // positions
                                  .Arg<ffi::Buffer<ffi::S32>>()   // num_tokens
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("sliding_window"));
