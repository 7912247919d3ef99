"""A CLIP's text side: tokenizing, embedding texts and caching the embeddings (memory, disk).

:class:`TextEncoder` is the base class of ``ClipBackend``, which adds the image tower. A
text's embedding never depends on which other texts are embedded with it, so cached and
uncached runs agree to the bit (see ``encode_text`` and ``encode_templates``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from cliprnn.compact import upcast_once
from cliprnn.similarity import normalise
from cliprnn.text_cache import TextCache, entry_key, resolve_text_cache_dir, weights_digest


class TextEncoder:
    """A frozen CLIP model's text embeddings, cached per string or per group of strings.

    ``model`` is a Hugging Face ``CLIPModel``, ``tokenizer`` its ``CLIPTokenizer``. Reduced
    ``dtype`` (float16/bfloat16) means autocast (see ``autocast``). With ``cache_text`` the
    embeddings are kept in memory and, when ``text_cache_dir`` names a folder (a
    ``CaRConfig.text_cache_dir`` value), on disk.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        cache_text: bool = True,
        group_templates: bool = True,
        text_cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.cache_text = cache_text
        #: embed each query's templates in one fixed forward pass (``encode_templates``)
        self.group_templates = group_templates
        #: the on-disk text cache's folder (None: memory only); used only with ``cache_text``
        self.text_cache_dir = resolve_text_cache_dir(text_cache_dir)
        self.context_length: int = int(model.config.text_config.max_position_embeddings)
        self.eot_token_id: int = int(model.config.text_config.eos_token_id)
        self._text_cache: dict[str, torch.Tensor] = {}  # one string per pass
        self._group_cache: dict[tuple[tuple[str, ...], str], torch.Tensor] = {}  # (templates, q)
        self._disk: TextCache | None = None
        self._disk_namespace: str | None = None
        self._disk_lock = threading.Lock()
        self._weights_hash: str | None = None
        #: wall seconds spent embedding texts (forward passes and disk cache reads)
        self.text_seconds = 0.0

    # ------------------------------------------------------------------ precision and threads
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to ``dtype`` when a reduced precision is asked; else a no-op.

        CUDA takes float16 or bfloat16; a CPU takes bfloat16 only (fast where it has AMX or
        AVX-512 BF16 units), and computes in fp32 when float16 is asked.
        """
        if self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16):
            return torch.autocast(device_type="cuda", dtype=self.dtype)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _few_threads(self) -> contextlib.AbstractContextManager[Any]:
        """One CPU thread for passes made of many small operations (short texts).

        Each parallel operation waits for every worker thread; on a busy machine that wait,
        not the arithmetic, dominates small operations.
        """
        return _one_thread() if self.device.type == "cpu" else contextlib.nullcontext()

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """OpenAI ``clip.tokenize`` ids: [n, context] int64, zero after EOT (truncated to fit)."""
        ids = self.tokenizer(
            list(texts), truncation=True, max_length=self.context_length, add_special_tokens=True
        )["input_ids"]
        out = torch.zeros(len(ids), self.context_length, dtype=torch.long)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out

    def _text_pass(self) -> contextlib.ExitStack:
        """The context of every text forward pass: no grad, autocast, one CPU thread, weights
        upcast once for all the passes inside."""
        stack = contextlib.ExitStack()
        for ctx in (torch.no_grad(), self.autocast(), self._few_threads(), upcast_once()):
            stack.enter_context(ctx)
        return stack

    def _forward_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """One forward pass of the text tower over ``texts``: L2-normalised [n, d].

        The batch is cut after its longest end-of-text token. Attention is causal and each
        embedding is read at its own end-of-text position, so the padding after it never
        changes the result; the arithmetic may still round differently with the batch's shape,
        so callers always embed the same group of strings together (see ``encode_text``).
        Call inside ``_text_pass``.
        """
        ids = self.tokenize(texts)
        length = max(self._text_length(row) for row in ids)
        pooled = self.model.text_model(input_ids=ids[:, :length].to(self.device)).pooler_output
        return normalise(self.model.text_projection(pooled).float())

    def _text_length(self, ids: torch.Tensor) -> int:
        ends = (ids == self.eot_token_id).nonzero()
        return int(ends[0, 0]) + 1 if len(ends) else int(ids.shape[0])

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        # One text per forward: a text's embedding must not depend on which texts share its
        # batch (matrix kernels round differently by position and batch shape), so cached and
        # uncached runs agree to the bit.
        start = time.perf_counter()
        with self._text_pass():
            out = torch.cat([self._forward_texts([text]) for text in texts])
        self.text_seconds += time.perf_counter() - start
        return out

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings [n, d], each string embedded on its own.

        With ``cache_text`` they are cached per string, in memory and (with ``text_cache_dir``)
        on disk.
        """
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.model.config.projection_dim, device=self.device)
        if not self.cache_text:
            return self._encode_uncached(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if missing:
            for text, feature in zip(missing, self._embed_groups([(t,) for t in missing]),
                                     strict=True):  # fmt: skip
                self._text_cache[text] = feature[0]
        return torch.stack([self._text_cache[t] for t in texts])

    def encode_templates(self, templates: Sequence[str], queries: Sequence[str]) -> torch.Tensor:
        """[Q, T, d]: every template filled with every query, L2-normalised.

        With ``group_templates`` (and more than one template) each query's T strings are one
        fixed group, embedded in one forward pass: a query's embeddings then depend only on the
        query and the template list, never on the other queries, and the cache (in memory and
        on disk) holds one [T, d] entry per query. Otherwise every string is embedded on its
        own (``encode_text``).
        """
        templates, queries = tuple(templates), list(queries)
        if not queries:
            dim = self.model.config.projection_dim
            return torch.zeros(0, len(templates), dim, device=self.device)
        if len(templates) == 1 or not self.group_templates:
            flat = self.encode_text([t.format(q) for q in queries for t in templates])
            return flat.view(len(queries), len(templates), -1)
        if not self.cache_text:
            start = time.perf_counter()
            with self._text_pass():
                out = torch.stack(
                    [self._forward_texts([t.format(q) for t in templates]) for q in queries]
                )
            self.text_seconds += time.perf_counter() - start
            return out
        missing = [q for q in dict.fromkeys(queries) if (templates, q) not in self._group_cache]
        if missing:
            groups = [tuple(t.format(q) for t in templates) for q in missing]
            for q, feats in zip(missing, self._embed_groups(groups), strict=True):
                self._group_cache[(templates, q)] = feats
        return torch.stack([self._group_cache[(templates, q)] for q in queries])

    def text_ensemble(self, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Per name: mean over templates of normalised embeddings, renormalised ([n, d])."""
        return normalise(self.encode_templates(templates, names).mean(dim=1))

    # ------------------------------------------------------------------ disk cache
    @property
    def weights_hash(self) -> str:
        """SHA-256 of the text tower's weights and settings (computed once, on first use)."""
        if self._weights_hash is None:
            model = self.model
            text_config = model.config.text_config
            settings = {
                name: getattr(text_config, name, None)
                for name in ("hidden_size", "intermediate_size", "num_hidden_layers",
                             "num_attention_heads", "max_position_embeddings", "vocab_size",
                             "hidden_act", "layer_norm_eps", "eos_token_id")
            }  # fmt: skip
            settings["projection_dim"] = model.config.projection_dim
            settings["attention"] = getattr(model.config, "_attn_implementation", None)
            tensors = [
                (f"{part}.{name}", tensor)
                for part in ("text_model", "text_projection")
                for name, tensor in getattr(model, part).state_dict().items()
            ]
            self._weights_hash = weights_digest(tensors, json.dumps(settings, sort_keys=True))
        return self._weights_hash

    def _text_compute(self) -> str:
        """Where and in what precision text passes run: part of every disk cache key."""
        reduced = (
            self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
        ) or (
            self.device.type == "cpu" and self.dtype == torch.bfloat16
        )  # what ``autocast`` runs in
        precision = str(self.dtype) if reduced else "torch.float32"
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else 0
            where = f"cuda:{torch.cuda.get_device_name(index)}"
        elif self.device.type == "cpu":
            cpu = getattr(torch.backends, "cpu", None)
            capability = cpu.get_cpu_capability() if cpu is not None else "?"
            where = f"cpu:{capability}:1-thread"
        else:
            where = self.device.type
        return f"{where}|{precision}|torch {torch.__version__}"

    def disk_cache(self) -> TextCache | None:
        """The on-disk text cache (None when disabled); hashes the weights on first call."""
        if self.text_cache_dir is None or not self.cache_text:
            return None
        with self._disk_lock:
            if self._disk is None:
                self._disk_namespace = f"{self.weights_hash}|{self._text_compute()}"
                self._disk = TextCache(self.text_cache_dir)
        return self._disk

    def _embed_groups(self, groups: list[tuple[str, ...]]) -> list[torch.Tensor]:
        """Each group's embeddings [len(group), d] from one forward pass per group, read from and
        written to the disk cache when it is enabled."""
        start = time.perf_counter()
        disk = self.disk_cache()
        dim = int(self.model.config.projection_dim)
        out: list[torch.Tensor | None] = [None] * len(groups)
        keys: list[str] = []
        if disk is not None:
            assert self._disk_namespace is not None
            for i, group in enumerate(groups):
                ids = [row[: self._text_length(row)].tolist() for row in self.tokenize(group)]
                keys.append(entry_key(self._disk_namespace, [list(group), ids]))
                found = disk.load(keys[i], (len(group), dim))
                if found is not None:
                    out[i] = torch.from_numpy(found).to(self.device)
        todo = [i for i, feats in enumerate(out) if feats is None]
        if todo:
            with self._text_pass():
                for i in todo:
                    out[i] = self._forward_texts(groups[i])
            if disk is not None:
                for i in todo:
                    feats = out[i]
                    assert feats is not None
                    disk.store(keys[i], feats.detach().cpu().numpy(), groups[i])
        self.text_seconds += time.perf_counter() - start
        return [feats for feats in out if feats is not None]


@contextlib.contextmanager
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
