"""Finding, checking and loading a CLIP model and its tokenizer, and choosing the device.

Every failure is a ModelLoadError naming the role (proposal or classifier), the name, where it
looked and how to use a local copy; a model folder's config.json is checked against
``MODEL_LIMITS`` before any weight is allocated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from cliprnn.errors import ConfigError, ModelLoadError

#: Tokens in OpenAI's CLIP BPE vocabulary: the only vocabulary supported.
VOCAB_SIZE = 49408

#: Largest dimensions a model folder's config.json may declare (ViT-bigG/14 fits), and the
#: most parameters they may add up to: checked before any weight is allocated.
MODEL_LIMITS = {
    "hidden_size": 4096,
    "intermediate_size": 16384,
    "num_hidden_layers": 64,
    "num_attention_heads": 64,
    "image_size": 1024,
    "max_position_embeddings": 1024,
    "vocab_size": 1_000_000,
}
MAX_MODEL_PARAMETERS = 3_000_000_000

_HINT = (
    "Pass a folder holding a Hugging Face CLIPModel (config.json + model.safetensors), "
    "or convert an OpenAI checkpoint with "
    "cliprnn.convert_openai_checkpoint(src, folder)."
)


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from a config value ("auto" picks CUDA, then MPS, then CPU)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device: unknown device {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device: {device!r} was asked for but CUDA is not available in this torch "
            f"({torch.__version__}); use device='cpu' or 'auto'"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device: {device!r} was asked for but only {torch.cuda.device_count()} CUDA "
            "device(s) exist"
        )
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps and mps.is_available()):
        raise ConfigError(
            f"device: {device!r} was asked for but MPS is not available; use device='cpu' or 'auto'"
        )
    return dev


def check_model_size(config: dict[str, Any], what: str) -> None:
    """ModelLoadError when a CLIP config declares dimensions past MODEL_LIMITS (a corrupt or
    hostile config.json would otherwise allocate until memory runs out)."""
    total = 0
    for tower in ("text_config", "vision_config"):
        sub = config.get(tower) or {}
        for key, limit in MODEL_LIMITS.items():
            value = sub.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
                raise ModelLoadError(
                    f"{what}: {tower}.{key} = {value!r} is outside 1..{limit}; the config.json "
                    "is corrupt or not a CLIP this library can load"
                )
        width = int(sub.get("hidden_size", 768))
        inner = int(sub.get("intermediate_size", 4 * width))
        total += int(sub.get("num_hidden_layers", 12)) * (4 * width * width + 2 * width * inner)
        total += int(sub.get("vocab_size", 0)) * width
    if total > MAX_MODEL_PARAMETERS:
        raise ModelLoadError(
            f"{what}: its config.json declares about {total / 1e9:.1f} billion parameters, over "
            f"the limit of {MAX_MODEL_PARAMETERS / 1e9:g} billion; it is corrupt or too large"
        )


def locate_model(name: str, role: str) -> tuple[str, Path | None]:
    """(what to pass to ``from_pretrained``, the local folder or None for a hub name).

    Raises ModelLoadError for a path that is not a CLIP folder (or declares too large a
    model), and for a hub name that is not cached while the hub is offline.
    """
    path = Path(name).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            raise ModelLoadError(
                f"{role} CLIP model {name!r}: {path} is a file, not a model folder. {_HINT}"
            )
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(
                f"{role} CLIP model {name!r}: {path} is not a CLIP checkpoint folder "
                f"(no config.json). {_HINT}"
            )
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"{role} CLIP model {name!r}: cannot read {config_file}: {exc}"
            ) from exc
        if model_type != "clip":
            raise ModelLoadError(
                f"{role} CLIP model {name!r}: {path} holds a {model_type!r} model, not a "
                f"CLIP checkpoint (model_type 'clip'). {_HINT}"
            )
        check_model_size(json.loads(config_file.read_text()), f"{role} CLIP model {name!r}")
        return str(path), path
    if _looks_like_path(name):
        raise ModelLoadError(
            f"{role} CLIP model {name!r}: local folder {path.resolve()} does not exist. {_HINT}"
        )
    if _offline() and not hub_cached(name):
        raise ModelLoadError(
            f"{role} CLIP model {name!r} is not a local folder and is not in the Hugging "
            f"Face cache ({_hub_cache_dir()}), and the hub is offline (HF_HUB_OFFLINE). "
            f"{_HINT}"
        )
    return name, None


def hub_cached(name: str) -> bool:
    """Whether the Hugging Face cache holds the hub model ``name``'s config.json."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:
        return False
    return isinstance(found, str)


def load_clip(name: str, role: str) -> tuple[Any, Any]:
    """(frozen fp32 ``CLIPModel`` on the CPU in eval mode, its ``CLIPTokenizer``).

    A folder without tokenizer files gets the bundled CLIP tokenizer. Raises ModelLoadError
    (see the module docstring), also for a vocabulary other than OpenAI's.
    """
    from transformers import CLIPModel

    where, folder = locate_model(name, role)
    try:
        model = CLIPModel.from_pretrained(
            where,
            attn_implementation="eager",
            dtype=torch.float32,
            trust_remote_code=False,
        )
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(_load_failure(name, role, folder, exc)) from exc
    text_vocab = int(model.config.text_config.vocab_size)
    if text_vocab != VOCAB_SIZE:
        raise ModelLoadError(
            f"{role} CLIP model {name!r}: text vocabulary of {text_vocab} tokens; only "
            f"OpenAI's {VOCAB_SIZE}-token BPE vocabulary is supported"
        )
    tokenizer = load_tokenizer(folder, name, role)
    return model.eval().requires_grad_(False), tokenizer


def load_tokenizer(folder: Path | None, name: str, role: str) -> Any:
    """The ``CLIPTokenizer`` of model folder ``folder`` (the bundled one when it has none).

    Raises ModelLoadError when the files do not load or are not CLIP's 49,408-token BPE.
    """
    from transformers import CLIPTokenizer

    from cliprnn.assets import tokenizer_source

    source = tokenizer_source(folder)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(source))
    except Exception as exc:
        raise ModelLoadError(
            f"{role} CLIP model {name!r}: cannot load the tokenizer from {source}: {exc}"
        ) from exc
    if len(tokenizer) != VOCAB_SIZE:
        raise ModelLoadError(
            f"{role} CLIP model {name!r}: the tokenizer in {source} has {len(tokenizer)} "
            f"tokens, not CLIP's {VOCAB_SIZE}; its vocab.json/merges.txt are not the CLIP "
            "BPE files (remove them to use the bundled tokenizer)"
        )
    return tokenizer


def model_problem(name_or_path: str | Path, role: str = "proposal") -> str | None:
    """Why the CLIP ``name_or_path`` cannot be loaded here without touching its weights (not a
    CLIP folder, or offline and not cached), or None when it can be (or will download)."""
    try:
        locate_model(str(name_or_path), role)
    except ModelLoadError as e:
        return str(e)
    return None


def _load_failure(name: str, role: str, folder: Path | None, exc: Exception) -> str:
    where = str(folder) if folder else f"the Hugging Face hub and cache ({_hub_cache_dir()})"
    return (
        f"could not load the {role} CLIP model {name!r} from {where}: "
        f"{type(exc).__name__}: {exc}. Pass a folder holding a Hugging Face CLIPModel, or "
        "convert an OpenAI checkpoint with cliprnn.convert_openai_checkpoint(src, folder)."
    )


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or name.endswith((".safetensors", ".pt", ".pth", ".bin"))
    )


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return "the Hugging Face cache"


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
