"""Everything about checkpoint files: the one safetensors seam, the lazy weight store, row reads, the
declarative key map (HF / mlx-community / converted layouts -> module paths), FP8/FP4 formats, the
quantization record, the precision policy and the converted format version. No model code here."""
