"""DeepSeek-V4.1-only pieces under the paper's names: CSA2 (cross-layer compressed KV), lagged mHC, the
in-forward fake quantization, and the Engram n-gram memory."""
