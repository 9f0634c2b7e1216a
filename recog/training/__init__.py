"""The training step and its faster variants (compiled programs, oneDNN kernels, fused checks)."""
