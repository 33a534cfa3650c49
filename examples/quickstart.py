# %% [markdown]
# # mlxseek quickstart
#
# Load a DeepSeek checkpoint, stream a completion, hold a two-turn chat on one prompt cache, and measure
# decode speed against the memory roofline (next to mlx-lm on the same weights).
#
# Set `MLXSEEK_MODEL` to a checkpoint folder (official HF, mlx-community 4-bit, or `mlxseek convert` output).
# Without it, a tiny random DeepSeek-V3-shaped checkpoint with the real DeepSeek tokenizer is generated:
# its weights are random, so its text is gibberish, but every step below runs exactly as on a real model.

# %%
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlxseek
from mlxseek.bench import bench, format_table
from mlxseek.tokenizer import apply_chat_template

model_dir = os.environ.get("MLXSEEK_MODEL")
if model_dir is None:
    repo = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "benchmarks" / "make_random_v3.py").exists())
    model_dir = Path(tempfile.mkdtemp()) / "ds-tiny"
    subprocess.run([sys.executable, str(repo / "benchmarks" / "make_random_v3.py"), "--preset", "tiny",
                    "--out", str(model_dir)], check=True)

model, tokenizer = mlxseek.load(model_dir)
print(f"{model.config.model_type}: {model.config.num_hidden_layers} layers, vocab {len(tokenizer)}")

# %% [markdown]
# ## Stream a completion
# `stream_generate` yields one small record per token: the new `text`, the `token`, speeds and peak memory.

# %%
prompt = apply_chat_template(tokenizer, [{"role": "user", "content": "Explain multi-head latent attention."}])
for r in mlxseek.stream_generate(model, tokenizer, prompt, max_tokens=32):
    print(r.text, end="", flush=True)
print(f"\n[{r.prompt_tokens} prompt tokens at {r.prompt_tps:.0f} tok/s, {r.generation_tokens} generated at "
      f"{r.generation_tps:.1f} tok/s, peak {r.peak_memory:.2f} GB, finish: {r.finish_reason}]")

# %% [markdown]
# ## Chat
# A `ChatSession` keeps one prompt cache: the second turn prefills only the new tokens.
# R1-style replies are also split into `r.reasoning` and `r.content`.

# %%
chat = mlxseek.ChatSession(model, tokenizer, system="You are concise.", max_tokens=24)
for question in ["What is DeepSeekMoE?", "And how many experts are active per token?"]:
    print(f">> {question}")
    for r in chat.send(question):
        print(r.text, end="", flush=True)
    print(f"\n[{r.prompt_tokens} new prompt tokens prefilled; {len(chat.tokens)} in the conversation]")

# %% [markdown]
# ## Benchmark
# Decode tok/s, achieved GB/s from the active bytes per token, and % of the memory roofline, next to
# mlx-lm with float32 activations on the same folder (add "mlx-lm" for its bf16 default; slow on a CPU).

# %%
rows = bench(model_dir, prompt_tokens=64, gen_tokens=16, runs=1, vs=["mlx-lm-fp32"])
print(format_table(rows))
