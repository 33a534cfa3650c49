# %% [markdown]
# # mlxseek quickstart
#
# Convert an official-format DeepSeek checkpoint to 4-bit, stream a completion (plain and with MTP
# self-speculation), hold a two-turn chat on one prompt cache, and measure decode speed against the
# memory roofline.
#
# Set `MLXSEEK_MODEL` to a checkpoint folder (official HF, mlx-community 4-bit, or `mlxseek convert` output).
# Without it, the bundled `tests/fixtures/trained_v3_fp8` is used: a small DeepSeek-V3 (MLA, noaux_tc MoE,
# MTP) trained here on Python's standard library and stored in DeepSeek's official FP8 block format. It
# writes stdlib-flavoured Python; it knows nothing else, so the chat answers are Python too.

# %%
import os
import tempfile
from pathlib import Path

import mlxseek
from mlxseek.tools.bench import bench, format_table

model_dir = os.environ.get("MLXSEEK_MODEL")
if model_dir is None:
    repo = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "tests" / "fixtures").is_dir())
    model_dir = Path(tempfile.mkdtemp()) / "trained_v3-4bit"
    # Streams tensor by tensor; FP8 blocks are dequantized in float32, then packed into 4-bit groups.
    mlxseek.convert(hf_path=repo / "tests" / "fixtures" / "trained_v3_fp8", mlx_path=model_dir,
                    quantize=True, q_bits=4, q_group_size=32, quiet=True)

model, tokenizer = mlxseek.load(model_dir)
print(f"{model.config.model_type}: {model.config.num_hidden_layers} layers, vocab {len(tokenizer)}, "
      f"weights laid out as {model.kernel_layout}")

# %% [markdown]
# ## Stream a completion
# `stream_generate` yields one small record per token: the new `text`, the `token`, speeds and peak memory.

# %%
prompt = "import os\n\n\ndef read_config(path):\n"
for r in mlxseek.stream_generate(model, tokenizer, prompt, max_tokens=48):
    print(r.text, end="", flush=True)
print(f"\n[{r.prompt_tokens} prompt tokens at {r.prompt_tps:.0f} tok/s, {r.generation_tokens} generated at "
      f"{r.generation_tps:.1f} tok/s, peak {r.peak_memory:.2f} GB, finish: {r.finish_reason}]")

# %% [markdown]
# ## MTP self-speculation
# The checkpoint's multi-token-prediction module drafts the next token; one forward pass verifies it.
# Greedy output is identical to plain decoding.

# %%
if "mtp" in model:
    text = ""
    for r in mlxseek.stream_generate(model, tokenizer, prompt, max_tokens=48, draft="mtp"):
        text += r.text
    print(f"[MTP drafted {r.draft_tokens} tokens, accepted {r.accepted_tokens} ({r.acceptance_rate:.0%}); "
          f"same text as plain decoding: {text == mlxseek.generate(model, tokenizer, prompt, max_tokens=48)}]")

# %% [markdown]
# ## Chat
# A `ChatSession` keeps one prompt cache: the second turn prefills only the new tokens.
# R1-style replies are also split into `r.reasoning` and `r.content`. (The bundled model never saw
# DeepSeek's chat format, so its replies are poor: this cell shows the mechanics.)

# %%
chat = mlxseek.ChatSession(model, tokenizer, max_tokens=16)
for question in ["def parse_args(argv):", "class Config:"]:
    print(f">> {question}")
    for r in chat.send(question):
        print(r.text, end="", flush=True)
    print(f"\n[{r.prompt_tokens} new prompt tokens prefilled; {len(chat.tokens)} in the conversation]")

# %% [markdown]
# ## Benchmark
# Decode tok/s, achieved GB/s from the active bytes per token, and % of the memory roofline.
# `mlxseek bench --model DIR --vs mlx-lm` adds mlx-lm on the same folder (it reads `--drop-mtp` conversions).

# %%
rows = bench(model_dir, prompt_tokens=64, gen_tokens=16, runs=1)
print(format_table(rows))
