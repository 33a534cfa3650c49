"""V4's FP4 routed experts below 4 bits: dequantized and requantized instead of kept as they are.

The key map imports FP4 experts as MLX mxfp4, byte for byte (4.25 bits/weight, no rounding at all), which
is the right choice at 4 bits and above. Asked for fewer bits (`--q-bits 2|3`, or a `--target-bpw` below
mxfp4's size), keeping them would leave ~95% of the weights at 4.25 bits; so their targets go back to
`stack_experts`, whose materializer dequantizes FP4 (e2m1 x e8m0) exactly in float32, and the recipe,
the weighted search and the allocation treat them like any other expert stack.
"""

from __future__ import annotations

from ..checkpoint.fp4 import MXFP4
from ..checkpoint.keymap import Plan, Target

MXFP4_BPW = MXFP4["bits"] + 8 / MXFP4["group_size"]  # 4 bits + one e8m0 exponent per 32 weights


def requantizes_fp4(*, recipe: str | None, bits: int, target_bpw: float | None) -> bool:
    """Whether a conversion with these options requantizes imported FP4 experts (see the module docstring)."""
    if target_bpw is not None:
        return target_bpw < MXFP4_BPW
    return recipe is not None and bits < MXFP4["bits"]


def unpack_fp4_experts(plan: Plan) -> list[str]:
    """Turn `plan`'s imported FP4 expert stacks into float `stack_experts` targets; returns their modules."""
    modules = []
    for i, t in enumerate(plan.targets):
        if t.op == "stack_experts_mxfp4":
            plan.targets[i] = Target("stack_experts", t.outputs[:1], t.sources)
            module = t.outputs[0].rsplit(".", 1)[0]
            plan.quantization.pop(module, None)
            modules.append(module)
    return modules
