"""The bundled miniature CLIP: its architecture, and the contrastive training that makes it."""

from cliprnn.dev.mini_clip.model import mini_clip_config, save_clip_folder

__all__ = ["mini_clip_config", "save_clip_folder"]
