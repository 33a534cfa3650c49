"""The precision policy: which parameters stay float32 whatever the compute or storage dtype.

The router and its correction bias decide expert choice, so small errors change which experts run;
DeepSeek-V4 ships its mHC mixing, attention sinks and compressor position biases in float32 (DSpark also
its Markov and confidence heads) and its reference computes them in float32. The loader, the pager and the
converter all read this one rule.
"""

from __future__ import annotations

import re

_V4_FP32 = re.compile(r"(^|\.)(attn_hc|ffn_hc|hc_head|markov_head|confidence_head)\.|\.sinks$|\.position_bias$")


def keep_fp32(name: str) -> bool:
    """True for a parameter (internal module path) that is kept in float32."""
    return ".mlp.gate." in name or _V4_FP32.search(name) is not None
