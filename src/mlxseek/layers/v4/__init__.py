"""DeepSeek-V4-only layers, under the paper's names: mHC (manifold-constrained hyper-connections),
the KV compressor (CSA/HCA), V4 attention with sinks, the V4 indexer, grouped output projection, V4 MoE."""
