"""Files shipped inside the package: CLIP tokenizer files and the bundled miniature CLIP.

The tokenizer files ship once, in ``tokenizer/``; the miniature CLIP's folders hold none and
read these (see :func:`tokenizer_source`).
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
MINI_CLIP_DIR = ASSETS_DIR / "mini_clip"
#: The files that make a model folder carry its own tokenizer.
BPE_FILES = ("vocab.json", "merges.txt")


def tokenizer_dir() -> Path:
    """Folder with the standard CLIP BPE tokenizer files (vocab.json, merges.txt, configs)."""
    return TOKENIZER_DIR


def tokenizer_source(model_folder: str | Path | None) -> Path:
    """The folder a CLIP model folder's tokenizer is read from: the model folder when it holds
    vocab.json and merges.txt, else the bundled tokenizer (:func:`tokenizer_dir`)."""
    if model_folder is not None and all((Path(model_folder) / f).is_file() for f in BPE_FILES):
        return Path(model_folder)
    return tokenizer_dir()


def mini_model_paths() -> tuple[Path, Path]:
    """Local folders of the bundled miniature CLIP: (proposal model, classifier model)."""
    return MINI_CLIP_DIR / "proposal", MINI_CLIP_DIR / "classifier"
