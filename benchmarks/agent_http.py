"""The agent session over HTTP, `mlxseek serve` beside `mlx_lm.server` on the same weights in one run;
prints JSON lines (imported by agent_bench.py: `--http`).

The fixtures ship no tokenizer, and mlx_lm.server needs one, so `word_folder` links a fixture's weights
and config into a new folder with a word-level tokenizer: id i is the word `w{i}`, except DeepSeek's
begin/end of sentence (ids 0, 1) and `<｜User｜>` / `<｜Assistant｜>` (agent_bench's USER_ID / ASSISTANT_ID).
A prompt is then space-separated words, and both servers encode it to the same ids (the text starts with
the begin-of-sentence token, so neither adds another). Each server's history grows by its own reply, as an
OpenAI completions client's would. The two servers run side by side, each turn sent to one and then the
other, the order alternating per turn.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

BOS, EOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"


def word_folder(src: Path, dst: Path, specials: dict[str, int]) -> Path:
    """`dst`: `src`'s config and weights (as float32) with a word-level tokenizer over its vocabulary."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    import mlx.core as mx

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # float32: MLX's CPU backend runs mlx-lm's expert matmul (gather_mm) in float32 only
        if f.suffix == ".safetensors" and not (dst / f.name).exists():
            mx.save_safetensors(str(dst / f.name), {k: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating)
                                                    else v for k, v in mx.load(str(f)).items()})
        elif f.suffix == ".json" and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    names = {i: t for t, i in specials.items()}
    words = {names.get(i, f"w{i}"): i for i in range(vocab)}
    tok = Tokenizer(WordLevel(words, unk_token="w2"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.save(str(dst / "tokenizer.json"))
    (dst / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
        "add_bos_token": False, "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False}))
    return dst


def text_of(ids: list[int], specials: dict[str, int]) -> str:
    names = {i: t for t, i in specials.items()}
    return " ".join(names.get(i, f"w{i}") for i in ids)


def servers(folder: Path, which: list[str], cache_gb: float):
    """name -> a started HttpTarget (serve_bench's) for each of `which` ("mlxseek", "mlx_lm")."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_bench import HttpTarget, free_port

    out = {}
    for name in which:
        port = free_port()
        if name == "mlxseek":
            argv = [sys.executable, "-c", "from mlxseek.cli import main; main()", "serve", "--model", str(folder),
                    "--port", str(port), "--log-level", "warning", "--prompt-cache-gb", str(cache_gb)]
            out[name] = HttpTarget("mlxseek serve", argv, port, folder.name)
        else:
            argv = [sys.executable, "-m", "mlx_lm.server", "--model", str(folder), "--port", str(port)]
            out[name] = HttpTarget("mlx_lm.server", argv, port, "default_model")
    return out


def http_session(family: str, src: Path, args, emit) -> None:
    """The session of agent_bench.session over HTTP (random ids >= 10: never a special token)."""
    rng = random.Random(args.seed)
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    words = lambda n: [rng.randrange(10, vocab) for _ in range(n)]  # noqa: E731
    specials = {BOS: 0, EOS: 1, USER: args.user_id, ASSISTANT: args.assistant_id}
    folder = word_folder(src, Path(args.http_dir) / f"{family}-words", specials)
    targets = servers(folder, args.http, args.cache_gb)
    history = {name: BOS + " " + text_of(words(args.system), specials) for name in targets}
    try:
        for turn in range(1, args.turns + 1):
            new = f" {USER} {text_of(words(args.turn_tokens), specials)} {ASSISTANT}"
            order = list(targets) if turn % 2 else list(reversed(targets))
            for name in order:
                prompt = history[name] + new
                r = targets[name].stream(prompt, args.reply)
                emit({"bench": "agent_http", "family": family, "server": name, "turn": turn,
                      "prompt_words": len(prompt.split()), "cached_tokens": r["cached"],
                      "ttft_s": round(r["ttft"], 4), "reply_tokens": r["tokens"]})
                history[name] = prompt + " " + r["text"].strip()
                time.sleep(0.5)  # the server files its cache entry after the last token: not in the next TTFT
    finally:
        for t in targets.values():
            t.close()
