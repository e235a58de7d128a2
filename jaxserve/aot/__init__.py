"""Compiling for hardware this machine does not have: the real XLA:TPU (Mosaic) and XLA:GPU (Triton, ptxas)
compilers run on compile-only devices (`jax.experimental.topologies`), so memory limits, layouts and kernel
resources are checked without an accelerator. Needs the toolchains of `make aot-tools` (see `toolchain`)."""
