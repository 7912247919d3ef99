"""CaR: the recurrent segmenter (proposals -> visual prompts -> classifier -> drop, repeat).

One module over 600 lines, on purpose: it is the one class ``CaR``, whose entry points
(``segment``, ``segment_many``, ``prepare``/``finish``) and the recurrence they run share the
engine's loaded models, its configuration and its per-image state. The stages themselves live
in their own modules (proposals, visual_prompts, classifier, postprocess).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import PIL.Image

from cliprnn.config import CaRConfig, ConfigLike
from cliprnn.errors import CaRError, ConfigError, ImageError, QueryError
from cliprnn.exemplars import Exemplars
from cliprnn.result import CaRResult, StepTrace
from cliprnn.timing import timed

if TYPE_CHECKING:
    from cliprnn.classifier import MaskClassifier
    from cliprnn.clip_backend import ClipBackend
    from cliprnn.postprocess import CrfFunction
    from cliprnn.proposals import ProposalGenerator
    from cliprnn.queries import NormalizedQueries
    from cliprnn.sam_refine import SamRefiner

#: An input image: a file path, a PIL image, or an array (H×W, H×W×1, H×W×3 or H×W×4).
ImageLike: TypeAlias = str | os.PathLike[str] | PIL.Image.Image | np.ndarray
#: A query: a text, or example images of the thing (:class:`cliprnn.Exemplars`).
Query: TypeAlias = str | Exemplars

#: Said when exemplar queries switch a faithful configuration to clean mode.
EXEMPLARS_CLEAN = (
    "exemplar queries run in clean mode (faithful=False): the reference code has no exemplar "
    "queries, so this call's text queries are scored the clean way too"
)

#: Above this many queries a uint8 label map cannot hold every class.
MAX_QUERIES = 65535

#: Configuration fields that choose the CLIP models or are fixed in them when they load:
#: engines sharing models (:meth:`CaR.sharing_models`) agree on all of them.
MODEL_FIELDS: tuple[str, ...] = (
    "proposal_model", "classifier_model", "device", "dtype", "compact_weights", "cache_text",
    "group_templates", "text_cache_dir",
)  # fmt: skip
#: The SAM refiner's fields: engines share a SAM only when they agree on all of them.
SAM_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(CaRConfig) if f.name.startswith("sam_")
)


@dataclass
class _PassOutput:
    """What one recurrence pass hands to post-processing."""

    live: list[int]  # indices (into the pass's queries) of the survivors
    proposals: np.ndarray  # [len(live), h, w] final soft masks
    scores: np.ndarray  # [len(live)] final classifier scores
    steps: int
    trace: list[StepTrace]


@dataclass
class PreparedImage:
    """One image after every model pass, before the CRF (:meth:`CaR.prepare`).

    Plain arrays and lists only; :meth:`CaR.finish` turns it into the :class:`CaRResult`.
    """

    image: np.ndarray  # uint8 [h, w, 3] at inference size (the CRF compares its colours)
    full_hw: tuple[int, int]  # the input's size, that of the returned maps
    queries: list[str]  # normalised queries
    passes: list[tuple[list[int], _PassOutput, float]]  # (query indices, output, bg_factor)
    stuff_first: bool  # a stuff pass ran: paint it first
    steps: int
    clean_twin: bool  # prepared by the clean twin (exemplar queries under a faithful config)
    trace: list[StepTrace] | None
    timings: dict[str, float]
    warnings: list[str]


class CaR:
    """CLIP as RNN: segment an image for a list of text queries with two frozen CLIP models.

    Models load lazily on first use (or eagerly with :meth:`load`), once per instance; text
    embeddings are cached across calls, so one instance should serve a whole dataset.

    Example::

        car = CaR(CaRConfig.preset("voc"))
        result = car.segment("dog.jpg", ["dog", "person", "sofa"])
        result.label_map  # 0 = background, i + 1 = result.queries[i]
        for result in car.segment_many(paths, ["dog", "person"]):  # in order, CRFs overlapped
            ...
    """

    def __init__(self, config: ConfigLike = None, **overrides: Any) -> None:
        """``config`` and ``overrides`` as :meth:`CaRConfig.resolve` takes them: a CaRConfig,
        a preset name, a dict of field values, or None for the default preset ("voc")."""
        self.config: CaRConfig = CaRConfig.resolve(config, **overrides)
        self._proposal_backend: ClipBackend | None = None
        self._classifier_backend: ClipBackend | None = None
        self._proposals: ProposalGenerator | None = None
        self._classifier: MaskClassifier | None = None
        self._sam: SamRefiner | None = None
        self._sam_lock = threading.Lock()  # finish() may run on several threads
        self._twin: CaR | None = None  # clean-mode twin for exemplar queries (faithful config)
        # Benchmarks and tests only (set_forced_schedule): keep the first ``schedule[step]``
        # live queries at each step instead of thresholding.
        self._forced_schedule: list[int] | None = None

    # ------------------------------------------------------------------ models
    @property
    def device(self) -> str:
        """The torch device the models run on ("auto" resolved)."""
        from cliprnn.clip_backend import resolve_device

        return str(resolve_device(self.config.device))

    @property
    def proposal_backend(self) -> ClipBackend:
        """The proposal generator's CLIP (loaded on first access)."""
        if self._proposal_backend is None:
            from cliprnn.clip_backend import ClipBackend

            self._proposal_backend = ClipBackend.from_config(self.config, role="proposal")
        return self._proposal_backend

    @property
    def classifier_backend(self) -> ClipBackend:
        """The mask classifier's CLIP (shared with the proposal CLIP when both name one model)."""
        if self._classifier_backend is None:
            if _same_model(self.config.classifier_model, self.config.proposal_model):
                self._classifier_backend = self.proposal_backend
            else:
                from cliprnn.clip_backend import ClipBackend

                self._classifier_backend = ClipBackend.from_config(self.config, role="classifier")
        return self._classifier_backend

    @property
    def proposal_generator(self) -> ProposalGenerator:
        """The proposal stage (Grad-CAM and the CLIP-ES refinement) on the proposal CLIP."""
        if self._proposals is None:
            from cliprnn.proposals import ProposalGenerator

            backend = self.proposal_backend
            config = self.config
            if not config.faithful:
                # Clean mode rounds the CAM input to whole patches; ``cam_input_multiple`` is the
                # reference's 16, which drops pixels for patch sizes that do not divide it.
                config = config.replace(cam_input_multiple=backend.patch_size)
            self._proposals = ProposalGenerator(backend, config)
        return self._proposals

    @property
    def classifier(self) -> MaskClassifier:
        """The mask classifier scoring visually prompted images on the classifier CLIP."""
        if self._classifier is None:
            from cliprnn.classifier import MaskClassifier

            self._classifier = MaskClassifier(self.classifier_backend, self.config)
        return self._classifier

    @property
    def sam(self) -> SamRefiner | None:
        """The SAM refiner (loaded on first access), or None without ``config.sam_checkpoint``."""
        if self._sam is None and self.config.sam_checkpoint:
            from cliprnn.sam_refine import SamRefiner

            self._sam = SamRefiner.from_config(self.config, device=self.device)
        return self._sam

    def sharing_models(
        self, *, engine_class: type[CaR] | None = None, **config_overrides: Any
    ) -> CaR:
        """A new engine whose configuration is this one's with ``config_overrides``, running on
        this engine's CLIP models (loaded now if they are not yet) instead of loading its own;
        an instance of ``engine_class`` (a CaR subclass built from a config alone; default CaR).

        Thresholds, prompts, steps, mode, CRF, ``faithful`` and the other settings outside
        :data:`MODEL_FIELDS` may change; an override that changes one of ``MODEL_FIELDS`` raises
        ConfigError naming it. The SAM refiner is shared when the ``sam_*`` settings agree;
        otherwise the new engine loads its own when first needed. The shared CLIPs keep what
        was fixed when they loaded: under ``faithful=False`` over a faithful engine's CLIPs,
        position embeddings stay rounded to fp16 as in faithful mode (as in :meth:`clean_twin`).
        Text embeddings cached by either engine serve both.
        """
        config = self.config.replace(**config_overrides) if config_overrides else self.config
        changed = [f for f in MODEL_FIELDS if getattr(config, f) != getattr(self.config, f)]
        if changed:
            raise ConfigError(
                f"sharing_models cannot change {changed}: they choose the loaded CLIP models; "
                "build a new CaR for other models"
            )
        twin = (engine_class or CaR)(config)
        twin._proposal_backend = self.proposal_backend
        twin._classifier_backend = self.classifier_backend
        if all(getattr(config, f) == getattr(self.config, f) for f in SAM_FIELDS):
            twin._sam = self.sam
            twin._sam_lock = self._sam_lock
        return twin

    def clean_twin(self) -> CaR:
        """This CaR in clean mode, sharing its models: it runs calls with exemplar queries."""
        if self._twin is None:
            self._twin = self.sharing_models(faithful=False)
        self._twin._forced_schedule = self._forced_schedule
        return self._twin

    def load(self) -> CaR:
        """Load every model now (raising ModelLoadError early) and return self."""
        _ = self.proposal_generator, self.classifier, self.sam
        return self

    # ------------------------------------------------------------------ public API
    def segment(
        self,
        image: ImageLike,
        queries: Sequence[Query],
        *,
        stuff: Sequence[str] | None = None,
        trace: bool = False,
    ) -> CaRResult:
        """Segment ``image`` for ``queries``; ``stuff`` marks background-like queries.

        A query is a string or a :class:`cliprnn.exemplars.Exemplars` (example images, named
        by its ``name`` in the result); both kinds compete in one recurrence. Exemplar queries
        run in clean mode: under a faithful configuration the call runs on :meth:`clean_twin`
        and says so in ``result.warnings``.

        ``stuff`` (default ``config.stuff_queries``) runs the paper's thing/stuff passes: stuff
        queries are segmented in their own pass and painted first, things on top.

        Models and queries are checked before the image is read, so a bad model (ModelLoadError)
        or query list (QueryError) is reported without touching the image; an unreadable image
        raises ImageError naming it. Images whose longer side exceeds ``config.max_image_side``
        (default 1024) are downscaled for inference; the label map and masks are returned at
        the input's full resolution.

        The same as ``finish(prepare(image, queries, ...))``; :meth:`segment_many` runs the two
        halves of consecutive images side by side.
        """
        return self.finish(self.prepare(image, queries, stuff=stuff, trace=trace))

    def segment_many(
        self,
        images: Iterable[ImageLike],
        queries: Sequence[Query],
        *,
        stuff: Sequence[str] | None = None,
        trace: bool = False,
    ) -> Iterator[CaRResult]:
        """Segment every image of ``images`` for the same ``queries``; yields in input order.

        Each result equals ``segment(image, queries, stuff=stuff, trace=trace)``. With
        ``config.crf_workers`` above 0, an image's CRF runs in a worker while the next image goes
        through the models (at most ``crf_workers + 1`` images in flight); with 0, images run
        one after the other. ``images`` is read lazily, so it may be a generator.

        Queries are checked before any image is read (QueryError). An image that fails ends
        the iteration, after the results of every image before it, with an exception naming
        it as ``images[i] (path or size)``: cliprnn's own errors (ImageError, ModelLoadError,
        ...) are raised again as the same class with that name before the message, the
        original as their cause; other exceptions are raised as they are, with the name added
        as a note. Closing the iterator early cancels the images not yet started. To carry on
        past failing images, :func:`cliprnn.pipeline.segment_stream` yields each image's
        exception in its place.
        """
        from cliprnn.exemplars import split_queries
        from cliprnn.pipeline import segment_stream

        self._normalize(split_queries(queries)[0])  # a bad query list fails before any image

        def items() -> Iterator[tuple[tuple[int, str], ImageLike | BaseException]]:
            for i, image in enumerate(images):
                key = (i, _describe(image))
                if isinstance(image, BaseException):  # segment_stream's "already failed" form
                    yield key, ImageError(f"not an image: {type(image).__name__}")
                else:
                    yield key, image

        stream = segment_stream(self, items(), lambda _key: queries, stuff=stuff, trace=trace)
        with contextlib.closing(stream):
            for (i, what), value in stream:
                if isinstance(value, BaseException):
                    raise _naming_image(value, f"images[{i}] ({what})")
                yield value

    def prepare(
        self,
        image: ImageLike,
        queries: Sequence[Query],
        *,
        stuff: Sequence[str] | None = None,
        trace: bool = False,
    ) -> PreparedImage:
        """The first half of :meth:`segment`: every model pass, up to (not including) the CRF.

        Raises what ``segment`` raises. The returned object holds plain arrays only; hand it to
        :meth:`finish` (from any thread) for the CRF, optional SAM refinement and the label map.
        """
        from cliprnn.exemplars import split_queries
        from cliprnn.imageio import inference_size, load_image, resize_image

        query_names, exemplars = split_queries(queries)
        if exemplars and self.config.faithful:
            prepared = self.clean_twin().prepare(image, queries, stuff=stuff, trace=trace)
            prepared.clean_twin = True
            prepared.warnings.append(EXEMPLARS_CLEAN)
            return prepared
        timings: dict[str, float] = {}
        self.load()
        normalized = self._normalize(query_names)
        names = normalized.queries
        if exemplars:
            with timed(timings, "exemplars"):
                for ex in exemplars.values():
                    ex.key()  # unreadable exemplars fail before the image is read
        with timed(timings, "decode"):
            full = load_image(image, self.config.max_image_pixels)
        height, width = full.shape[:2]
        small_hw = inference_size(height, width, self.config.max_image_side)
        work = full if small_hw == (height, width) else resize_image(full, small_hw)
        del full  # only its size is needed from here on

        stuff_set = set(self.config.stuff_queries if stuff is None else stuff)
        stuff_idx = [i for i, q in enumerate(names) if q in stuff_set]
        thing_idx = [i for i, q in enumerate(names) if q not in stuff_set]
        if hasattr(self.classifier, "reset_cache"):
            self.classifier.reset_cache()

        traces: list[StepTrace] = []
        steps = 0
        state = None
        passes = []
        if thing_idx:
            thing_bg = (
                [names[i] for i in stuff_idx if names[i] not in exemplars]
                if stuff_idx and self.config.mutual_background
                else normalized.background
            )
            passes.append((thing_idx, thing_bg, self.config.visual_prompts, self.config.bg_factor))
        if stuff_idx:
            stuff_bg = [
                names[i] for i in thing_idx if names[i] not in exemplars
            ] or normalized.background
            passes.append(
                (stuff_idx, stuff_bg, self.config.stuff_visual_prompts, self.config.stuff_bg_factor)
            )
        outputs: list[tuple[list[int], _PassOutput, float]] = []
        for idx, background, prompts, bg_factor in passes:
            if state is None or not self.config.reuse_dense_pass:
                with timed(timings, "dense"):
                    state = self._dense_state(work)
            out = self._recurrence(
                work, [names[i] for i in idx], background, prompts, state, trace, timings,
                exemplars,
            )  # fmt: skip
            steps = max(steps, out.steps)
            traces.extend(out.trace)
            outputs.append((idx, out, bg_factor))
        return PreparedImage(
            image=work,
            full_hw=(int(height), int(width)),
            queries=list(names),
            passes=outputs,
            stuff_first=bool(stuff_idx),
            steps=steps,
            clean_twin=False,
            trace=traces if trace else None,
            timings=timings,
            warnings=list(normalized.warnings),
        )

    def finish(self, prepared: PreparedImage, *, crf_fn: CrfFunction | None = None) -> CaRResult:
        """The second half of :meth:`segment`: CRF, SAM refinement, label map, full-size outputs.

        Touches no CLIP model, so it may run on another thread while the next image is prepared
        (SAM, when configured, is serialised by a lock). ``crf_fn`` stands in for
        ``cliprnn.postprocess.dense_crf`` (``segment_stream`` runs it in a worker process).
        """
        if prepared.clean_twin and self.config.faithful:
            return self.clean_twin().finish(prepared, crf_fn=crf_fn)
        work = prepared.image
        names = prepared.queries
        timings = prepared.timings
        height, width = prepared.full_hw
        masks = np.zeros((len(names), *work.shape[:2]), dtype=bool)
        soft = np.zeros((len(names), *work.shape[:2]), dtype=np.float32)
        scores = np.zeros(len(names), dtype=np.float32)
        # Stuff first, things on top: paint order follows the pass order reversed.
        pass_masks: list[tuple[list[int], np.ndarray, np.ndarray]] = []
        for idx, out, bg_factor in prepared.passes:
            with timed(timings, "crf"):
                final_masks, lost = self._postprocess(work, out.proposals, bg_factor, crf_fn)
            pass_scores = np.where(lost, 0.0, out.scores).astype(np.float32)
            if self.sam is not None:
                with timed(timings, "sam"), self._sam_lock:
                    final_masks = self.sam.refine(work, final_masks)
            global_idx = [idx[j] for j in out.live]
            masks[global_idx] = final_masks
            soft[global_idx] = out.proposals
            scores[global_idx] = pass_scores
            pass_masks.append((global_idx, final_masks, pass_scores))

        with timed(timings, "labels"):
            label_map = self._label_map(
                pass_masks, work.shape[:2], stuff_first=prepared.stuff_first
            )
            if work.shape[:2] != (height, width):
                from cliprnn.imageio import resize_masks_nearest, resize_soft

                label_map = _resize_labels(label_map, (height, width))
                masks = resize_masks_nearest(masks, (height, width))
                soft = resize_soft(soft, (height, width))
        has_pixels: np.ndarray = np.asarray(masks.reshape(len(names), -1).any(axis=1))
        scores = final_scores(scores, has_pixels, faithful=self.config.faithful)
        kept = [q for q, s, p in zip(names, scores, has_pixels, strict=True) if s > 0 and p]
        return CaRResult(
            label_map=label_map.astype(np.int32, copy=False),
            queries=list(names),
            kept=kept,
            scores=scores,
            masks=masks,
            steps=prepared.steps,
            soft_masks=soft,
            trace=prepared.trace,
            timings=timings,
            warnings=list(prepared.warnings),
        )

    # ------------------------------------------------------------------ stages
    def _normalize(self, queries: Sequence[Any]) -> NormalizedQueries:
        from cliprnn.queries import normalize_queries

        tokenizer = self.proposal_backend.tokenizer if self._proposal_backend else None
        normalized = normalize_queries(
            queries,
            self.config.background_words,
            tokenizer=tokenizer,
            faithful=self.config.faithful,
        )
        if len(normalized.queries) > MAX_QUERIES:
            raise QueryError(f"{len(normalized.queries)} queries; at most {MAX_QUERIES} supported")
        return normalized

    def _cam_texts(self, names: list[str], step: int) -> list[str]:
        # The reference embeds raw names in the first step's CAM, templated names afterwards.
        if self.config.faithful and step == 0:
            return list(names)
        return [self.config.cam_template.format(n) for n in names]

    def _recurrence(
        self,
        image: np.ndarray,
        names: list[str],
        background: list[str],
        prompts: Sequence[str],
        state: Any,
        trace: bool,
        timings: dict[str, float],
        exemplars: Mapping[str, Any] | None = None,
    ) -> _PassOutput:
        from cliprnn.classifier import keep_decisions

        cfg = self.config
        live = list(range(len(names)))
        prev_count = 0
        prev: dict[int, np.ndarray] = {}
        traces: list[StepTrace] = []
        proposals = np.zeros((0, *image.shape[:2]), np.float32)
        final_scores = np.zeros(0, np.float32)
        steps = 0
        for step in range(cfg.max_steps):
            steps = step + 1
            live_names = [names[i] for i in live]
            if step > 0 and not cfg.reuse_dense_pass:
                with timed(timings, "dense"):
                    state = self._dense_state(image)
            proposals, extras = self._propose(
                state, live_names, background, step, trace, exemplars, timings
            )
            for stage, seconds in extras.pop("timings", {}).items():  # dense, text, cam, affinity
                timings[stage] = timings.get(stage, 0.0) + seconds
            if prev and not proposals.reshape(len(live), -1).any():
                proposals = np.stack([prev[i] for i in live])  # the reference's stale-mask guard
            prev = {i: proposals[j] for j, i in enumerate(live)}
            score_matrix, cls_extras = self._score(
                image, proposals, live_names, prompts, trace, timings, exemplars
            )
            diag = np.diag(score_matrix).astype(np.float32)
            kept_local = [int(j) for j in keep_decisions(diag, cfg.confidence_threshold)]
            if self._forced_schedule is not None:
                keep = self._forced_schedule[min(step, len(self._forced_schedule) - 1)]
                kept_local = list(range(max(1, min(keep, len(live)))))
            if trace:
                extras = {**extras, **cls_extras}
                traces.append(
                    StepTrace(
                        queries=live_names,
                        proposals=proposals.copy(),
                        scores=np.asarray(score_matrix, np.float32),
                        kept=[live_names[j] for j in kept_local],
                        extras=extras,
                    )
                )
            new_live = [live[j] for j in kept_local]
            proposals, final_scores = proposals[kept_local], diag[kept_local]
            if cfg.faithful:
                # The reference compares the number of passing queries with the previous step's
                # (initially 0), so it always runs a confirmation step.
                done = len(kept_local) == prev_count
            else:
                unchanged = new_live == live
                done = unchanged and (step > 0 or cfg.early_stop_clean)
            prev_count = len(kept_local)
            live = new_live
            if done:
                break
        return _PassOutput(live, proposals, final_scores, steps, traces)

    def _dense_state(self, image: np.ndarray) -> Any:
        """The proposal CLIP's per-image state (CAM input, dense pass, affinity)."""
        return self.proposal_generator.prepare(image)

    def _score(
        self,
        image: np.ndarray,
        proposals: np.ndarray,
        names: list[str],
        prompts: Sequence[str],
        trace: bool,
        timings: dict[str, float],
        exemplars: Mapping[str, Any] | None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The classifier's score matrix [N, N] for ``proposals`` drawn as visual prompts on
        ``image`` (rows: prompted images, columns: ``names``), and its trace extras (with
        ``trace``, ``prompted_images`` among them)."""
        from cliprnn.visual_prompts import apply_visual_prompts

        cfg = self.config
        with timed(timings, "prompts"):
            prompted = [
                apply_visual_prompts(image, p, prompts, cfg.mask_threshold, faithful=cfg.faithful)
                for p in proposals
            ]
        with timed(timings, "classifier"):
            columns = self._exemplar_columns(names, exemplars, "cls", timings)
            matrix, extras = self.classifier.score(prompted, names, trace=trace, **columns)
        if trace:
            extras = {**extras, "prompted_images": np.stack(prompted)}
        return matrix, extras

    def _exemplar_columns(
        self,
        names: list[str],
        exemplars: Mapping[str, Any] | None,
        kind: str,
        timings: dict[str, float],
    ) -> dict[str, Any]:
        """The CAM's or classifier's ``exemplars`` and ``calibration`` arguments for ``names``."""
        if not exemplars or not any(n in exemplars for n in names):
            return {}
        from cliprnn.exemplars import calibration_rows, exemplar_embedding

        if kind == "cls":
            backend, ab = self.classifier_backend, self.config.exemplar_classifier_calibration
        else:
            backend, ab = self.proposal_backend, self.config.exemplar_cam_calibration
        with timed(timings, "exemplars"):
            rows = {
                j: exemplar_embedding(backend, exemplars[n], kind, self.config)
                for j, n in enumerate(names)
                if n in exemplars
            }
        return {"exemplars": rows, "calibration": calibration_rows(names, exemplars, ab)}

    def _propose(
        self,
        state: Any,
        names: list[str],
        background: list[str],
        step: int,
        trace: bool,
        exemplars: Mapping[str, Any] | None = None,
        timings: dict[str, float] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        cam_texts = self._cam_texts(names, step)
        timings = {} if timings is None else timings
        if self.config.mode == "semantic":
            columns = self._exemplar_columns(names, exemplars, "patch_mean", timings)
            return self.proposal_generator.propose(
                state, cam_texts, background, trace=trace, **columns
            )
        # Referring mode: each phrase competes with the background words only.
        outs = [
            self.proposal_generator.propose(
                state, [text], background, trace=trace,
                **self._exemplar_columns([name], exemplars, "patch_mean", timings),
            )
            for name, text in zip(names, cam_texts, strict=True)
        ]  # fmt: skip
        proposals = np.concatenate([p for p, _ in outs], axis=0)
        stage_seconds: dict[str, float] = {}
        for _, out_extras in outs:
            for stage, seconds in out_extras.pop("timings", {}).items():
                stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
        extras: dict[str, Any] = {"timings": stage_seconds}
        if trace:
            for key in outs[0][1]:
                values = [e[key] for _, e in outs]
                try:
                    extras[key] = np.concatenate([np.asarray(v) for v in values], axis=0)
                except (ValueError, TypeError):
                    extras[key] = values
        return proposals, extras

    def _postprocess(
        self,
        image: np.ndarray,
        proposals: np.ndarray,
        bg_factor: float,
        crf_fn: CrfFunction | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Final binary masks for the survivors and which ones lost every pixel to the CRF."""
        from cliprnn.postprocess import crf_masks, crf_masks_separate

        if len(proposals) == 0:
            return np.zeros_like(proposals, dtype=bool), np.zeros(0, dtype=bool)
        if self.config.mode == "referring":
            masks, extras = crf_masks_separate(
                image, proposals, self.config, bg_factor=bg_factor, crf_fn=crf_fn
            )
        else:
            masks, extras = crf_masks(
                image, proposals, self.config, bg_factor=bg_factor, crf_fn=crf_fn
            )
        lost = np.asarray(extras.get("lost", np.zeros(len(proposals), bool)), dtype=bool)
        return masks.astype(bool), lost

    @staticmethod
    def _label_map(
        pass_masks: list[tuple[list[int], np.ndarray, np.ndarray]],
        hw: tuple[int, int],
        *,
        stuff_first: bool,
    ) -> np.ndarray:
        from cliprnn.postprocess import assign_label

        label_map = np.zeros(hw, dtype=np.int32)
        ordered = list(reversed(pass_masks)) if stuff_first else pass_masks
        for global_idx, masks, scores in ordered:
            if not global_idx:
                continue
            local = assign_label(masks, scores)
            painted = local > 0
            lookup = np.asarray([0, *[g + 1 for g in global_idx]], dtype=np.int32)
            label_map[painted] = lookup[local[painted]]
        return label_map


def set_forced_schedule(car: CaR, schedule: Sequence[int] | None) -> None:
    """Benchmarks and tests only: make ``car`` keep the first ``schedule[step]`` live queries at
    each recurrent step (the last entry for later steps; at least one) instead of thresholding
    the classifier scores; None restores thresholding.

    Randomly initialised CLIPs make the real schedule arbitrary; this fixes how many steps run
    and how many queries each one drops. Exemplar calls under a faithful configuration follow
    it too (:meth:`CaR.clean_twin`).
    """
    car._forced_schedule = None if schedule is None else [int(k) for k in schedule]


def _describe(image: object) -> str:
    """A short name of an input image for error messages."""
    if isinstance(image, (str, os.PathLike)):
        return os.fsdecode(image)
    if isinstance(image, PIL.Image.Image):
        return f"PIL image {image.width}×{image.height}"
    if isinstance(image, np.ndarray):
        return f"array {'×'.join(str(n) for n in image.shape)}"
    return type(image).__name__


def _naming_image(exc: BaseException, name: str) -> BaseException:
    """``exc`` reported for the image ``name`` (see :meth:`CaR.segment_many`)."""
    if isinstance(exc, CaRError):
        try:
            named = type(exc)(f"{name}: {exc}")
        except TypeError:  # a subclass with another constructor
            pass
        else:
            named.__cause__ = exc
            return named
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(f"while segmenting {name}")
    return exc


def final_scores(scores: np.ndarray, has_pixels: np.ndarray, *, faithful: bool) -> np.ndarray:
    """Per-query scores after post-processing (float32 [Q]).

    ``scores`` already hold 0 for dropped queries and, in faithful mode, for survivors that
    lost their one-hot channel. Faithful mode keeps the score of a survivor whose channel
    exists but is empty (as the reference does); clean mode gives every survivor without a
    pixel the score 0.
    """
    out: np.ndarray = np.asarray(scores, dtype=np.float32).copy()
    if not faithful:
        out[~np.asarray(has_pixels, dtype=bool)] = 0.0
    return out


def _resize_labels(label_map: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    src = label_map.astype(np.int32, copy=False)  # nearest-neighbour keeps every int32 value
    resized: np.ndarray = cv2.resize(src, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return resized


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b
