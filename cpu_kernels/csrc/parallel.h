// parallel_for over XLA's intra-op thread pool, safe when every pool thread is itself busy or waiting.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace cpuk {

// Runs body(i) for every i in [0, n). The caller and up to (pool threads - 1) pool tasks claim indices from one
// shared counter; the caller returns once every index is done. A task that starts after the counter ran out
// finds nothing to do and never touches `body`, so the caller never waits for a task that has not started: no
// deadlock when XLA runs several kernels at once and each pool thread is inside one of them.
template <typename Body>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t n, const Body& body) {
  const int64_t threads = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), n);
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  const Body* fn = &body;
  auto run = [state, n, fn] {
    int64_t i;
    while ((i = state->next.fetch_add(1, std::memory_order_relaxed)) < n) {
      (*fn)(i);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) {
    auto task = run;
    pool.Schedule(std::move(task));
  }
  run();
  for (int spins = 0; state->done.load(std::memory_order_acquire) < n; ++spins) {
    if (spins > 64) std::this_thread::yield();
  }
}

// Splits `total` units into chunks of at least `min_units` (and at most enough for 4 chunks per thread).
inline int64_t num_chunks(xla::ffi::ThreadPool& pool, int64_t total, int64_t min_units) {
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  return std::max<int64_t>(1, std::min<int64_t>(total / std::max<int64_t>(min_units, 1), 4 * threads));
}

}  // namespace cpuk
