"""Files shipped inside the package: CLIP tokenizer files and the bundled miniature CLIP."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
MINI_CLIP_DIR = ASSETS_DIR / "mini_clip"


def tokenizer_dir() -> Path:
    """Folder with the standard CLIP BPE tokenizer files (vocab.json, merges.txt, configs)."""
    return TOKENIZER_DIR


def mini_model_paths() -> tuple[Path, Path]:
    """Local folders of the bundled miniature CLIP: (proposal model, classifier model)."""
    return MINI_CLIP_DIR / "proposal", MINI_CLIP_DIR / "classifier"
