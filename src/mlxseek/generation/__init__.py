"""Generation: the decode loop (`generate_step`), chunked prefill, streaming records
(`stream_generate`), and multi-turn chat (`ChatSession`)."""
