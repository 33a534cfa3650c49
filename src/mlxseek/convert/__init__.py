"""Checkpoint conversion: key map, FP8 dequantization, quantization recipes, shard writer."""
