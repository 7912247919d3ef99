"""Write the Hugging Face CLIP tokenizer files derived from OpenAI's BPE merge list.

Usage: python scripts/make_tokenizer_files.py [--bpe PATH] [--out DIR]

PATH is ``bpe_simple_vocab_16e6.txt.gz`` or an ``open_clip_torch`` wheel holding it; by default
the installed ``open_clip`` package is searched (without importing it). DIR defaults to
``cliprnn/assets/tokenizer``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # OpenAI keeps this many merge lines after the header
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "cliprnn" / "assets" / "tokenizer"


def byte_symbols() -> list[str]:
    """The 256 byte-level BPE symbols in OpenAI's vocabulary order (printable bytes first)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def read_bpe_text(path: Path | None) -> str:
    """The decompressed BPE merge file, from a .gz file, a wheel, or the installed open_clip."""
    if path is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("open_clip is not installed; pass --bpe PATH (.txt.gz or wheel)")
        path = Path(next(iter(spec.submodule_search_locations))) / BPE_NAME
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            return gzip.decompress(wheel.read(f"open_clip/{BPE_NAME}")).decode("utf-8")
    return gzip.decompress(path.read_bytes()).decode("utf-8")


def build_vocab_and_merges(bpe_text: str) -> tuple[dict[str, int], list[str]]:
    """The 49,408-token vocabulary and the 48,894 merges, in OpenAI's id order."""
    merges = bpe_text.split("\n")[1 : 1 + N_MERGES]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    if len(tokens) != VOCAB_SIZE or len(set(tokens)) != VOCAB_SIZE:
        raise SystemExit(f"expected {VOCAB_SIZE} distinct tokens, built {len(set(tokens))}")
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(bpe_text: str, out: Path) -> None:
    """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json in ``out``."""
    vocab, merges = build_vocab_and_merges(bpe_text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        **special,
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": CONTEXT_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bpe", type=Path, default=None, help=f"{BPE_NAME} or an open_clip wheel")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    write_tokenizer_files(read_bpe_text(args.bpe), args.out)
    print(f"wrote tokenizer files to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
