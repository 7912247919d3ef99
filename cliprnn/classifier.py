"""The mask classifier g: score every prompted image against every live query."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cliprnn.queries import synonyms

if TYPE_CHECKING:
    from cliprnn.clip_backend import ClipBackend
    from cliprnn.config import CaRConfig


def template_probabilities(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """Per-template query probabilities [T, N, Q] of N images against Q queries.

    ``image_features`` [N, d] and ``text_features`` [T, Q, d] are L2-normalised; for each
    template t the row of image n is softmax_q(logit_scale · cos(image_n, text_{t,q})).
    """
    logits = logit_scale * torch.einsum("nd,tqd->tnq", image_features, text_features)
    return logits.softmax(dim=-1)


def double_softmax(template_probs: torch.Tensor) -> torch.Tensor:
    """The reference score matrix [N, Q]: softmax_q of the template-summed probabilities."""
    return template_probs.sum(dim=0).softmax(dim=-1)


def ensemble_scores(
    image_features: torch.Tensor, text_ensemble: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """Clean-mode score matrix [N, Q]: one softmax over template-averaged query embeddings."""
    return (logit_scale * image_features @ text_ensemble.T).softmax(dim=-1)


def keep_decisions(scores_diag: np.ndarray | Sequence[float], theta: float) -> list[int]:
    """Indices of the queries whose own score is strictly above ``theta``, in order.

    When none passes, the single best-scoring query is kept, so the result is never empty.
    """
    scores = np.asarray(scores_diag, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        return []
    kept = [int(i) for i in np.flatnonzero(scores > theta)]
    return kept or [int(np.argmax(scores))]


def image_key(image: np.ndarray) -> str:
    """A digest of an image's shape, dtype and pixels (the embedding cache's key)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{arr.shape}{arr.dtype}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class MaskClassifier:
    """Scores prompted images against live queries with the classifier CLIP.

    Faithful mode reproduces the reference: truncated image tower, per-template probabilities
    and the double softmax. Clean mode uses the full tower and one softmax over
    template-averaged (and synonym-averaged) text embeddings. Either way each query's templates
    are embedded as one fixed group with ``group_templates``, each string on its own without.
    """

    def __init__(self, backend: ClipBackend, config: CaRConfig) -> None:
        self.backend = backend
        self.config = config
        self._text_cache: dict[str, torch.Tensor] = {}  # query -> [T, d] template embeddings
        self._ensemble_cache: dict[str, torch.Tensor] = {}
        self._image_cache: dict[str, torch.Tensor] = {}
        self.tower_calls = 0  # forwards of the image tower since construction

    def reset_cache(self) -> None:
        """Forget cached image embeddings (call at the start of every image)."""
        self._image_cache.clear()

    # -- text ---------------------------------------------------------------------------------

    def _encode(self, queries: list[str]) -> torch.Tensor:
        """[Q, T, d] template embeddings, through the per-query cache when enabled."""
        templates = self.config.templates
        if not self.config.cache_text:
            return self.backend.encode_templates(templates, queries).float().cpu()
        missing = list(dict.fromkeys(q for q in queries if q not in self._text_cache))
        if missing:
            encoded = self.backend.encode_templates(templates, missing).float().cpu()
            self._text_cache.update(zip(missing, encoded, strict=True))
        return torch.stack([self._text_cache[q] for q in queries])

    def template_text_features(self, queries: Sequence[str]) -> torch.Tensor:
        """[T, Q, d]: every template filled with every query (``backend.encode_templates``)."""
        return self._encode(list(queries)).transpose(0, 1).contiguous()

    def ensemble_text_features(self, queries: Sequence[str]) -> torch.Tensor:
        """[Q, d]: per query, the mean over templates (and synonyms) of normalised embeddings."""
        rows = []
        for q in queries:
            if q not in self._ensemble_cache or not self.config.cache_text:
                names = synonyms(q, faithful=False)
                per_name = self.backend.text_ensemble(names, self.config.templates).float().cpu()
                mean = per_name.mean(dim=0)
                self._ensemble_cache[q] = mean / mean.norm()
            rows.append(self._ensemble_cache[q])
        return torch.stack(rows)

    # -- images -------------------------------------------------------------------------------

    def _tower(self, images: list[np.ndarray]) -> torch.Tensor:
        """Embeddings [len(images), d] in batches of ``config.batch_size``."""
        out = []
        bs = self.config.batch_size
        for start in range(0, len(images), bs):
            pixels = self.backend.classifier_input(
                images[start : start + bs], crop=self.config.classifier_crop
            )
            with torch.no_grad():
                emb = self.backend.image_embeddings(pixels, truncated=self.config.faithful)
            self.tower_calls += 1
            out.append(emb.float().cpu())
        return torch.cat(out)

    def _image_features(self, images: list[np.ndarray], passes: int) -> torch.Tensor:
        """[N, d] embeddings; ``passes`` > 1 re-runs the tower that often (reference schedule)."""
        reuse = self.config.reuse_unchanged_prompts
        keys = [image_key(im) for im in images] if reuse else [str(i) for i in range(len(images))]
        todo = list(dict.fromkeys(k for k in keys if not (reuse and k in self._image_cache)))
        first = {k: keys.index(k) for k in todo}
        fresh: dict[str, torch.Tensor] = {}
        if todo:
            batch = [images[first[k]] for k in todo]
            for _ in range(passes):
                emb = self._tower(batch)
            fresh = dict(zip(todo, emb, strict=True))
            if reuse:
                self._image_cache.update(fresh)
        return torch.stack([fresh[k] if k in fresh else self._image_cache[k] for k in keys])

    # -- scoring ------------------------------------------------------------------------------

    def score(
        self,
        prompted: list[np.ndarray],
        queries: list[str],
        *,
        trace: bool = False,
        exemplars: Mapping[int, torch.Tensor] | None = None,
        calibration: torch.Tensor | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Score matrix P [N, N] (rows: prompted images, columns: queries) and trace extras.

        ``exemplars`` gives the embedding of the columns that are exemplar queries (clean mode
        only), whose cosines ``calibration`` [N, 2] maps to a·c + b. With ``trace``, extras hold
        ``cls_input`` [N, 3, S, S] and, in faithful mode, ``template_probs`` [T, N, N].
        """
        if exemplars and self.config.faithful:
            raise ValueError("exemplar queries are scored in clean mode only (faithful=False)")
        n = len(prompted)
        if n != len(queries):
            raise ValueError(f"{n} prompted images for {len(queries)} queries")
        extras: dict[str, Any] = {}
        if n == 0:
            return np.zeros((0, 0), np.float32), extras
        if n == 1 and self.config.skip_single_query_classifier:
            return np.ones((1, 1), np.float32), extras
        if trace:
            pixels = self.backend.classifier_input(prompted, crop=self.config.classifier_crop)
            extras["cls_input"] = pixels.float().cpu().numpy()
        scale = float(self.backend.logit_scale)
        if self.config.faithful:
            text = self.template_text_features(queries)
            passes = 1 if self.config.classifier_single_pass else len(self.config.templates)
            image = self._image_features(prompted, passes)
            probs = template_probabilities(image, text, scale)
            scores = double_softmax(probs)
            if trace:
                extras["template_probs"] = probs.numpy().astype(np.float32)
        else:
            image = self._image_features(prompted, 1)
            if exemplars:
                from cliprnn.exemplars import query_columns
                from cliprnn.similarity import calibrated_logits

                embed = self.ensemble_text_features
                text = query_columns(n, exemplars, lambda rows: embed([queries[j] for j in rows]))
                scores = calibrated_logits(image, text, scale, calibration).softmax(dim=-1)
            else:
                text = self.ensemble_text_features(queries)
                scores = ensemble_scores(image, text, scale)
        return scores.numpy().astype(np.float32), extras
