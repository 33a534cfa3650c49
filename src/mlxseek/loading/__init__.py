"""`mlxseek.load`: checkpoint folder -> (model, tokenizer), strictly, with the backend's choices applied
once (dtype, weight layout) and the model placed (resident, sharded or paged)."""
