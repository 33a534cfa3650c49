"""Serving benchmark, mlxseek vs mlx_lm.server on the same weights in one run; prints JSON lines.

    python benchmarks/serve_bench.py                      # writes a small random V3 (16K context) if missing
    python benchmarks/serve_bench.py --model DIR --rpm-seconds 60 --jsonl out.jsonl

Measures (greedy, /v1/completions with the same prompt text on both servers):
  ttft_s        time to the first streamed token, cold (new server) vs warm (a second request sharing a
                --prefix-tokens prefix, different suffix): what a prefix cache saves;
  decode_tok_s  streamed tokens per second after the first (median of --decode-runs), vs in-process
                `mlxseek.stream_generate` timed the same way;
  rpm           requests per minute from 4 clients sending agent-like turns (a shared system prompt and a
                history that grows by each turn's question and reply).
When `mlxseek.serve.create_app` is importable, mlxseek is measured through HTTP (`mlxseek serve` as a
subprocess on a free 127.0.0.1 port); otherwise through `mlxseek.serve.engine.Engine` in process
(engine "mlxseek-engine": no HTTP cost). mlx_lm.server always runs as a subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
TEXT = HERE.parent / "tests" / "fixtures" / "trained_v3_heldout.txt"
DEFAULT_MODEL = Path("/tmp/mlxseek-bench/serve-v3")
TIMEOUT = 600.0  # seconds for one request (a cold 4K prefill on a slow CPU)


def ensure_model(folder: Path) -> Path:
    """A random V3-shaped 4-bit model, float32 (MLX's fast CPU dtype), 16K context, no MTP: mlx-lm reads it."""
    if (folder / "config.json").exists():
        return folder
    sys.path.insert(0, str(HERE))
    from make_random_v3 import PRESETS, write_random_checkpoint

    cfg = dict(PRESETS["tiny"], hidden_size=256, num_hidden_layers=4, intermediate_size=512,
               moe_intermediate_size=256, n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
               num_attention_heads=4, num_key_value_heads=4, q_lora_rank=128, kv_lora_rank=128,
               max_position_embeddings=16384,
               rope_scaling=dict(PRESETS["tiny"]["rope_scaling"], factor=4, original_max_position_embeddings=4096))
    print(f"writing the random serve-bench model to {folder} ...", file=sys.stderr)
    return write_random_checkpoint(folder, cfg, bits=4, group_size=64, dtype="float32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emit(row: dict, jsonl: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if jsonl:
        with jsonl.open("a") as f:
            f.write(line + "\n")


# --- clients ---------------------------------------------------------------------------------------------


class HttpTarget:
    """A server subprocess answering OpenAI /v1/completions on 127.0.0.1."""

    def __init__(self, name: str, argv: list[str], port: int, model: str):
        self.name, self.url, self.model = name, f"http://127.0.0.1:{port}", model
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with code {self.proc.returncode}: {' '.join(argv)}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.close()
        raise SystemExit(f"{name} did not answer on {self.url} within 300 s")

    def stream(self, prompt: str, max_tokens: int) -> dict:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
                "stream_options": {"include_usage": True}}
        t0, first, n, usage, text = time.perf_counter(), None, 0, {}, ""
        with httpx.stream("POST", f"{self.url}/v1/completions", json=body, timeout=TIMEOUT) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices"):
                    first = first or time.perf_counter()
                    n += 1
                    text += chunk["choices"][0].get("text", "")
                usage = chunk.get("usage") or usage
        end = time.perf_counter()
        tokens = usage.get("completion_tokens", n)
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        return {"ttft": first - t0, "decode": (tokens - 1) / max(end - first, 1e-9), "tokens": tokens,
                "cached": cached, "text": text}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class EngineTarget:
    """mlxseek's Engine in process, driven from its own event loop thread."""

    name = "mlxseek-engine"

    def __init__(self, folder: Path):
        import mlxseek
        from mlxseek.serve.engine import Engine

        self.model, self.tok = mlxseek.load(folder)
        self.engine = Engine(self.model, self.tok, model_id=str(folder))
        self.engine.start()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def _stream(self, prompt: str, max_tokens: int) -> dict:
        from mlxseek.serve.engine import SamplingParams

        t0, first, ev, text = time.perf_counter(), None, None, ""
        async for ev in self.engine.generate(self.tok.encode(prompt), SamplingParams(max_tokens=max_tokens)):
            first = first or time.perf_counter()
            text += ev.text
        end = time.perf_counter()
        return {"ttft": first - t0, "decode": (ev.generation_tokens - 1) / max(end - first, 1e-9),
                "tokens": ev.generation_tokens, "cached": ev.cached_tokens, "text": text}

    def stream(self, prompt: str, max_tokens: int) -> dict:
        return asyncio.run_coroutine_threadsafe(self._stream(prompt, max_tokens), self.loop).result(TIMEOUT)

    def close(self) -> None:
        self.engine.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)


# --- measurements --------------------------------------------------------------------------------------------


def texts(tokenizer_dir: Path, prefix_tokens: int):
    """(a prefix of about `prefix_tokens` tokens of real code, a function making distinct suffixes)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tok.encode(TEXT.read_text() * 4, add_special_tokens=False)
    prefix = tok.decode(ids[:prefix_tokens])
    return prefix, lambda i: f"\n# task {i}: explain what the code above does in one line\n"


def measure_target(target, args, prefix: str, suffix, jsonl) -> None:
    base = {"engine": target.name, "prefix_tokens": args.prefix_tokens}
    for run in range(args.runs):
        shared = suffix(10_000 + run) + prefix  # a new shared prefix per run: its first request is cold
        for phase, i in (("cold", 2 * run), ("warm", 2 * run + 1)):
            r = target.stream(shared + suffix(i), args.gen_tokens)
            emit(dict(base, metric="ttft_s", phase=phase, run=run, value=round(r["ttft"], 4), cached_tokens=r["cached"]),
                 jsonl)
    rs = [target.stream(suffix(-1) + "def main():", args.decode_tokens) for _ in range(args.decode_runs)]
    emit(dict(base, metric="decode_tok_s", value=round(statistics.median(r["decode"] for r in rs), 2),
              runs=[round(r["decode"], 2) for r in rs], tokens=rs[0]["tokens"]), jsonl)
    emit(dict(base, metric="rpm", clients=4, **agent_rpm(target, args, prefix[: len(prefix) // 4])), jsonl)


def agent_rpm(target, args, system: str) -> dict:
    """4 clients, each resending its whole growing conversation every turn, for args.rpm_seconds."""
    stop_at = time.time() + args.rpm_seconds
    done = [0] * 4
    t0 = time.perf_counter()

    def client(c: int) -> None:
        history = system + f"\n# agent {c}\n"
        turn = 0
        while time.time() < stop_at:
            history += f"\n# user: step {turn} of the refactor, agent {c}\n# assistant:"
            history += target.stream(history, args.agent_tokens)["text"]
            done[c] += 1
            turn += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"value": round(sum(done) * 60 / elapsed, 2), "requests": sum(done), "seconds": round(elapsed, 1)}


def in_process_decode(folder: Path, args, jsonl) -> None:
    import mlxseek

    model, tok = mlxseek.load(folder)
    prompt = "\n# task -1: explain what the code above does in one line\ndef main():"
    speeds = []
    for _ in range(args.decode_runs):
        first, n = None, 0
        for r in mlxseek.stream_generate(model, tok, prompt, max_tokens=args.decode_tokens):
            first, n = first or time.perf_counter(), r.generation_tokens
        speeds.append((n - 1) / max(time.perf_counter() - first, 1e-9))  # the clients' definition
    emit({"engine": "mlxseek.stream_generate", "metric": "decode_tok_s", "value": round(statistics.median(speeds), 2),
          "runs": [round(v, 2) for v in speeds], "tokens": n}, jsonl)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--prefix-tokens", type=int, default=4000)
    ap.add_argument("--gen-tokens", type=int, default=8, help="tokens per TTFT request")
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--decode-runs", type=int, default=3, help="decode measurements per engine (median)")
    ap.add_argument("--agent-tokens", type=int, default=24, help="reply tokens per agent turn")
    ap.add_argument("--rpm-seconds", type=float, default=60)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-mlx-lm", action="store_true")
    ap.add_argument("--jsonl", type=Path)
    args = ap.parse_args()
    folder = ensure_model(args.model)
    prefix, suffix = texts(folder, args.prefix_tokens)

    try:
        import mlxseek.serve as serve_pkg

        http = hasattr(serve_pkg, "create_app")
    except ImportError:
        http = False
    targets = []
    if http:
        port = free_port()
        argv = [sys.executable, "-c", "from mlxseek.cli import main; main()", "serve", "--model", str(folder),
                "--port", str(port), "--log-level", "warning"]
        targets.append(lambda argv=argv, port=port: HttpTarget("mlxseek-http", argv, port, folder.name))
    else:
        targets.append(lambda: EngineTarget(folder))
    if not args.skip_mlx_lm:
        lm_port = free_port()
        lm_argv = [sys.executable, "-m", "mlx_lm.server", "--model", str(folder), "--port", str(lm_port)]
        targets.append(lambda: HttpTarget("mlx_lm.server", lm_argv, lm_port, "default_model"))
    for make in targets:  # one at a time: they would share the CPU otherwise
        target = make()
        try:
            measure_target(target, args, prefix, suffix, args.jsonl)
        finally:
            target.close()
    in_process_decode(folder, args, args.jsonl)
    emit({"metric": "config", "model": str(folder), "http": http, "pid": os.getpid(),
          **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}, args.jsonl)


if __name__ == "__main__":
    main()
