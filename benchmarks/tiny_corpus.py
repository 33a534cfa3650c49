"""Offline corpus and BPE tokenizer for `train_tiny.py`: the running interpreter's own standard library.

Documents are the top-level `.py` files of `sysconfig.get_paths()["stdlib"]` (source, comments and
docstrings). The held-out split is fixed by file name (crc32 % HOLDOUT_MOD == 0), so it does not depend
on the Python version's file list order; the tokenizer is trained on the training split only.
"""

from __future__ import annotations

import json
import sysconfig
import zlib
from pathlib import Path

HOLDOUT_MOD = 16
# DeepSeek's special tokens (bos 0, eos 1, as in V3's config.json) plus its chat markers, so the loader's
# DeepSeek chat template renders; the model never sees the chat markers in training.
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
SPECIALS = [BOS, EOS, "<｜User｜>", "<｜Assistant｜>"]


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


def split_corpus() -> tuple[list[str], list[str], list[str]]:
    """(train texts, held-out texts, held-out file names)."""
    train, held, names = [], [], []
    for p in stdlib_files():
        text = p.read_text(encoding="utf-8", errors="replace")
        if zlib.crc32(p.name.encode()) % HOLDOUT_MOD == 0:
            held.append(text)
            names.append(p.name)
        else:
            train.append(text)
    return train, held, names


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style pre-tokenizer and decoder) with DeepSeek's special tokens first."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # Like DeepSeek's tokenizer.json: encoding adds bos (id 0) in front.
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    return tok


def save_tokenizer(tok, folder: Path, max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json (no chat template: mlxseek supplies DeepSeek's)."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
        "add_bos_token": True, "add_eos_token": False, "model_max_length": max_length,
        "clean_up_tokenization_spaces": False, "legacy": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def encode_documents(tok, texts: list[str]) -> list[int]:
    """One stream: bos + document + eos, for every document (ids 0 and 1)."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    out: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        out += [bos, *enc.ids, eos]
    return out
