"""Prompts/s of batched `score` for one or more routers, against a one-prompt-at-a-time loop of
the same router and against an MF router's batched `score`; on a CPU or a GPU.

The loop is how the paper's server calls its router (one prompt per request). The MF router is
the speed floor the default router is held to (at least half of MF's prompts/s): embedding plus
one dot product; its weights are random, which does not change its speed. All runs use the
same prompts of mixed length, in one process, with no embedding cache.

    .venv/bin/python -m bench.score_speed [--router NAME_OR_DIR ...] [--rows 2000]
    # on a GPU host: a million prompts per router in half precision, large batches
    .venv/bin/python -m bench.score_speed --router default --rows 1000000 --device cuda \\
        --dtype float16 --batch-rows 1024 --batch-tokens 131072 --call-size 100000 \\
        --loop-rows 0 --no-mf

- `--router` (repeatable): a shipped name (`default`, ...) or a router directory.
- Prompts: `--unique` distinct generated prompts (seed `--seed`), or the `prompt` column of
  `--prompts FILE.parquet`, repeated in order up to `--rows`. Generating is slow, so a large
  run repeats a smaller set; nothing caches embeddings, so a repeat costs what a new prompt
  with the same words does (a static embedder caches the tokens of each chunk of words).
- `--device`, `--dtype`, `--batch-rows`, `--batch-tokens` go to the router as load options
  where its kind takes them (`device`, `dtype`, `bf16`, `max_batch_size`, `batch_tokens`; see
  each kind's `*LoadOptions`; a causal LM keeps its own `batch_size`). A router that embeds
  with the shared sentence-transformers embedder and has no such option (quality_gap, mf,
  sw_ranking) gets them applied to that embedder by this script instead: moved to the device,
  cast to the dtype, its batch limits raised. What was applied is printed. A static
  (model2vec) embedder runs in numpy on the CPU whatever the device.
- Timing: `load` is loading the router and scoring 16 prompts (which loads the model); then
  `--rows` prompts are scored in calls of `--call-size` (default: one call), timed alone.
- Peak RSS is the process's (`ru_maxrss`): with several routers it is the largest so far, so
  give one `--router` per process for one router's figure. On CUDA, peak GPU memory is per
  router.
- `--static-breakdown`: for a router with a static (model2vec) embedder, also times, on the
  same prompts in the same process, its encoding alone (its chunk cache emptied first, see
  `routers.text.word_pieces`), its encoding without the chunk cache (every prompt through
  the Rust tokenizer, as before the cache), model2vec's own `encode` (the path the embedder
  took before it encoded batches itself) and the Rust tokenizer alone, each as a ratio of the
  others: on a busy machine the ratios hold where the rates do not. It also prints how many
  chunks the prompts hold and how many of those are distinct: the cache saves most where
  chunks repeat, and generated prompts repeat them far more than real ones.
- Each router ends with one `RESULT {json}` line; `--json FILE` writes those as a list.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.pop("ROUTERAY_EMBEDDING_CACHE", None)  # measure the model, not a cache

import numpy as np
import torch

from bench.timing import peak_rss_mib, repeated, timed
from routeray.demo.prompts import generate_prompts
from routers import load_router, read_config, router_class, router_path
from routers.data.model_names import STRONG_MODEL, WEAK_MODEL
from routers.kinds.mf import MFNet, MFRouter
from routers.text.embedders import CachedEmbedder, Embedder
from routers.text.static import StaticEmbedder
from routers.text.word_pieces import CONTROL

HALF = ("float16", "bfloat16")


def bench_prompts(rows: int, unique: int | None, seed: int, path: str | None) -> list[str]:
    """`rows` prompts: the distinct ones (generated or read), repeated in order."""
    if path:
        import pyarrow.parquet as pq

        distinct = [p for p in pq.read_table(path, columns=["prompt"]).column(0).to_pylist() if p]
        distinct = distinct[:unique] if unique else distinct
    else:
        distinct = generate_prompts(min(rows, unique or 20_000), seed=seed)
    if not distinct:
        raise SystemExit("no prompts to score")
    return repeated(distinct, rows)


def load_options(
    kind: type, device: str | None, dtype: str | None, batch_rows: int | None, tokens: int | None
) -> dict[str, Any]:
    """The bench settings a router kind takes as load options."""
    fields = kind.load_options.model_fields
    wanted: dict[str, Any] = {
        "device": device,
        "dtype": dtype,
        # BERT's only precision option: bf16 autocast on a GPU.
        "bf16": True if dtype in HALF else None,
        # Encoder batch limits only: a causal LM's `batch_size` (8 by default) stays its own,
        # since an encoder-sized batch of an 8B model would not fit.
        "max_batch_size": batch_rows,
        "batch_tokens": tokens,
    }
    return {k: v for k, v in wanted.items() if k in fields and v is not None}


def tune_embedder(
    router: Any,
    taken: dict[str, Any],
    device: str | None,
    dtype: str | None,
    batch_rows: int | None,
    tokens: int | None,
) -> str:
    """Apply what the kind's load options did not take to the router's shared embedder (loading
    it); return a description of the embedder as it will run."""
    if not hasattr(type(router), "embedder"):
        return "no shared embedder"
    embedder = router.embedder
    if isinstance(embedder, CachedEmbedder):
        embedder = embedder.embedder
    if not isinstance(embedder, Embedder):
        size = getattr(embedder, "batch_size", None)
        if batch_rows and size is not None and "batch_size" not in taken:
            embedder.batch_size = batch_rows
        return f"{type(embedder).__name__} {embedder.name} (numpy on the CPU), batch {size}"
    if device and "device" not in taken:
        embedder.model.to(device)
    if dtype and "dtype" not in taken:
        embedder.model.to(getattr(torch, dtype))
    if batch_rows and "max_batch_size" not in taken:
        embedder.max_batch_size = batch_rows
    if tokens and "batch_tokens" not in taken:
        embedder.batch_tokens = tokens
    weights = next(embedder.model.parameters()).dtype
    return (
        f"sentence-transformers {embedder.name} on {embedder.device}, "
        f"{str(weights).removeprefix('torch.')}, batches of at most {embedder.max_batch_size} "
        f"prompts / {embedder.batch_tokens} padded tokens"
    )


def score_in_calls(router: Any, prompts: Sequence[str], call_size: int | None) -> np.ndarray:
    size = call_size or len(prompts)
    return np.concatenate(
        [router.score(prompts[i : i + size]) for i in range(0, len(prompts), size)]
    )


def cuda_peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_mib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def measure(name: str, args: argparse.Namespace, prompts: list[str]) -> dict[str, Any]:
    directory = router_path(name)
    kind = router_class(str(read_config(directory)["router"]))
    settings = (args.device, args.dtype, args.batch_rows, args.batch_tokens)
    options = load_options(kind, *settings)
    cuda_peak_reset()

    def load() -> tuple[Any, str]:
        router = load_router(directory, **options)
        embedder = tune_embedder(router, options, *settings)
        router.score(prompts[:16])  # the model loads on first use; warm up before timing
        return router, embedder

    (router, embedder), load_s = timed(load)
    print(f"router {name} ({directory}, kind {kind.kind})", flush=True)
    print(f"  load options:       {options or 'none'}")
    print(f"  embedder:           {embedder}")
    print(f"  load + warm-up:     {load_s:8.1f} s", flush=True)
    batched, batched_s = timed(score_in_calls, router, prompts, args.call_size)
    calls = f"calls of {args.call_size}" if args.call_size else "one call"
    print(
        f"  batched score:      {len(prompts) / batched_s:8.1f} prompts/s "
        f"({len(prompts)} prompts, {batched_s:.1f} s, {calls})",
        flush=True,
    )
    result: dict[str, Any] = {
        "router": name,
        "kind": kind.kind,
        "rows": len(prompts),
        "device": args.device or "as loaded",
        "dtype": args.dtype or "as loaded",
        "load_options": options,
        "embedder": embedder,
        "load_s": round(load_s, 3),
        "score_s": round(batched_s, 3),
        "prompts_per_s": round(len(prompts) / batched_s, 1),
    }
    loop_rows = min(len(prompts), args.loop_rows)
    if loop_rows:
        looped = prompts[:loop_rows]
        single, single_s = timed(lambda: np.concatenate([router.score([p]) for p in looped]))
        ratio = (len(prompts) / batched_s) / (loop_rows / single_s)
        print(f"  one at a time:      {loop_rows / single_s:8.1f} prompts/s ({single_s:.1f} s)")
        print(f"  ratio batched/loop: {ratio:8.2f}x")
        difference = float(np.abs(batched[:loop_rows] - single).max())
        print(f"  max |batched - single| score difference: {difference:.2e}")
        result |= {"loop_prompts_per_s": round(loop_rows / single_s, 1), "max_diff": difference}
    if args.static_breakdown:
        result["static"] = static_breakdown(router, prompts)
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)
    gpu = cuda_peak_mib()
    print(
        f"  peak RSS:           {result['peak_rss_mib']:8.0f} MiB (this process so far)"
        + (f"; peak GPU memory {gpu:.0f} MiB" if gpu is not None else ""),
        flush=True,
    )
    if gpu is not None:
        result["peak_gpu_mib"] = round(gpu, 1)
    return result


def static_breakdown(router: Any, prompts: list[str]) -> dict[str, float] | None:
    """Prompts/s of the static embedder's encode, of model2vec's encode and of the tokenizer
    alone, timed back to back on `prompts` (None: the router has no static embedder)."""
    # Through a probability curve's wrapper, if the directory records one (`.raw` inside it).
    raw = getattr(router, "raw", router)
    embedder = getattr(raw, "embedder", None) if hasattr(type(raw), "embedder") else None
    embedder = embedder.embedder if isinstance(embedder, CachedEmbedder) else embedder
    if not isinstance(embedder, StaticEmbedder):
        return None
    size = embedder.batch_size

    def tokenize() -> None:
        for start in range(0, len(prompts), size):
            embedder.tokenizer.encode_batch_fast(
                prompts[start : start + size], add_special_tokens=False
            )

    def model2vec() -> np.ndarray:
        return embedder.model.encode(
            prompts, max_length=None, batch_size=size, use_multiprocessing=False
        )

    def fresh_cache() -> np.ndarray:
        if embedder.words is not None:
            embedder.words.clear()
        return embedder.encode(prompts)

    def without_cache() -> np.ndarray:
        words, embedder.words = embedder.words, None
        try:
            return embedder.encode(prompts)
        finally:
            embedder.words = words

    rates: dict[str, float] = {}
    for label, fn in (
        ("encode", fresh_cache),
        ("encode_no_cache", without_cache),
        ("model2vec", model2vec),
    ):
        _, seconds = timed(fn)
        rates[label] = len(prompts) / seconds
    _, seconds = timed(tokenize)
    rates["tokenizer"] = len(prompts) / seconds
    print(
        f"  static embedder:    encode {rates['encode']:.1f} (chunk cache emptied first), "
        f"without the chunk cache {rates['encode_no_cache']:.1f}, model2vec's encode "
        f"{rates['model2vec']:.1f}, tokenizer alone {rates['tokenizer']:.1f} prompts/s; "
        f"encode / without the cache {rates['encode'] / rates['encode_no_cache']:.2f}, "
        f"encode / model2vec {rates['encode'] / rates['model2vec']:.2f}, encode / tokenizer "
        f"{rates['encode'] / rates['tokenizer']:.2f}",
        flush=True,
    )
    result: dict[str, float] = {f"{k}_prompts_per_s": round(v, 1) for k, v in rates.items()}
    return result | chunk_counts(prompts)


def chunk_counts(prompts: list[str]) -> dict[str, float]:
    """How much the static embedder's chunk cache can save on `prompts`: their chunks
    (whitespace-delimited, normalised as it does) and how many of those are distinct (the
    tokenizer's work with the cache), and how many prompts are ASCII (the rest hold at least
    one chunk that the tokenizer normalises further)."""
    ascii_count = sum(map(str.isascii, prompts))
    joined = b" ".join(p.encode(errors="replace") for p in prompts)
    chunks = joined.translate(None, CONTROL).lower().split()
    distinct = len(set(chunks))
    print(
        f"  chunk cache:        {len(chunks)} chunks, {distinct} distinct "
        f"({distinct / max(len(chunks), 1):.2%}); {ascii_count} of {len(prompts)} prompts ASCII",
        flush=True,
    )
    return {
        "chunks": len(chunks),
        "distinct_chunks": distinct,
        "ascii_share": round(ascii_count / len(prompts), 4),
    }


def mf_reference(args: argparse.Namespace, prompts: list[str]) -> float:
    """Prompts/s of an MF router with random weights over the default embedder."""
    mf = MFRouter(MFNet(2, 384, 64), [STRONG_MODEL, WEAK_MODEL])
    tune_embedder(mf, {}, args.device, args.dtype, args.batch_rows, args.batch_tokens)
    mf.score(prompts[:16])
    _, mf_s = timed(score_in_calls, mf, prompts, args.call_size)
    print(f"MF batched score:     {len(prompts) / mf_s:8.1f} prompts/s ({mf_s:.1f} s)")
    return len(prompts) / mf_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--router", action="append", help="shipped name or directory; repeat")
    parser.add_argument("--rows", "--n", dest="rows", type=int, default=2000)
    parser.add_argument("--unique", type=int, help="distinct prompts (default min(rows, 20000))")
    parser.add_argument("--prompts", help="Parquet file whose `prompt` column to score")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: as the router loads)")
    parser.add_argument("--dtype", choices=["float32", *HALF], help="default: as loaded")
    parser.add_argument("--batch-rows", type=int, help="prompts per forward pass at most")
    parser.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass at most")
    parser.add_argument("--call-size", type=int, help="prompts per score() call (default: all)")
    parser.add_argument("--loop-rows", type=int, default=2000, help="0: no one-at-a-time loop")
    parser.add_argument("--no-mf", action="store_true", help="skip the random-weight MF run")
    parser.add_argument("--json", help="write the RESULT records to this file")
    parser.add_argument(
        "--static-breakdown", action="store_true", help="time a static embedder's parts"
    )
    args = parser.parse_args(argv)

    prompts = bench_prompts(args.rows, args.unique, args.seed, args.prompts)
    words = np.array([len(p.split()) for p in prompts])
    cuda = (
        f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
        if torch.cuda.is_available()
        else "none"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, CUDA: {cuda}"
    )
    source = args.prompts or f"generated (seed {args.seed})"
    print(
        f"prompts: {len(prompts)} ({len(set(prompts))} distinct, {source}), words "
        f"min/median/max {words.min()}/{int(np.median(words))}/{words.max()}",
        flush=True,
    )
    results, failed = [], []
    for name in args.router or ["default"]:
        try:
            results.append(measure(name, args, prompts))
        except Exception as exc:  # one router that cannot run must not hide the others
            print(f"router {name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
    if not args.no_mf and results:
        mf_rate = mf_reference(args, prompts)
        for result in results:
            ratio = result["prompts_per_s"] / mf_rate
            result["ratio_to_mf"] = round(ratio, 3)
            print(f"ratio {result['router']}/MF: {ratio:8.2f} (target >= 0.5)")
    for result in results:
        print("RESULT " + json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
