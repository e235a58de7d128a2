"""Pallas attention kernels that know nothing of models (arrays in, arrays out).

Empty until the kernels issue lands; the engine's XLA path (jaxserve.attention.xla) serves every platform now.
"""
