"""Tools over a model or a config: bench, eval, info, estimate (with its census and machine table)."""
