"""Serving over several devices: meshes and shardings for tensor parallelism (and, beside them, multi-host)."""
