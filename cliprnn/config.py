"""CaR configuration: every hyperparameter of the paper in one dataclass, with named presets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from cliprnn.errors import ConfigError

#: The 23 background words of every shipped reference config (CLIP-ES's VOC list minus
#: "keyboard" and "sign").
BACKGROUND_WORDS: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river",
    "sea", "railway", "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road",
    "rock", "street", "valley", "bridge",
)  # fmt: skip

#: Appendix D's three background groups (112 words), an option for open vocabularies.
BACKGROUND_TERRESTRIAL: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "mountain", "rock", "valley", "earth", "terrain",
    "forest", "bush", "hill", "field", "pasture", "meadow", "plateau", "cliff", "canyon",
    "ridge", "peak", "plain", "prairie", "tundra", "savanna", "steppe", "crag", "knoll",
    "dune", "glen", "dale", "copse", "thicket",
)  # fmt: skip
BACKGROUND_AQUATIC_ATMOSPHERIC: tuple[str, ...] = (
    "sea", "ocean", "lake", "water", "river", "sky", "cloud", "pond", "stream", "lagoon",
    "bay", "gulf", "fjord", "estuary", "creek", "brook", "reservoir", "pool", "spring",
    "marsh", "swamp", "wetland", "glacier", "iceberg", "atmosphere", "stratosphere", "mist",
    "fog", "rain", "drizzle", "hail", "sleet", "snow", "thunderstorm", "breeze", "wind",
    "gust", "hurricane", "tornado", "monsoon", "cumulus", "cirrus", "stratus", "nimbus",
)  # fmt: skip
BACKGROUND_MAN_MADE: tuple[str, ...] = (
    "building", "house", "wall", "road", "street", "railway", "railroad", "bridge",
    "edifice", "structure", "apartment", "condominium", "skyscraper", "highway", "boulevard",
    "lane", "alley", "byway", "avenue", "expressway", "freeway", "path", "overpass",
    "underpass", "viaduct", "tunnel", "footbridge", "crosswalk", "culvert", "dam", "archway",
    "causeway", "plaza", "square", "station", "terminal",
)  # fmt: skip
BACKGROUND_WORDS_LARGE: tuple[str, ...] = (
    BACKGROUND_TERRESTRIAL + BACKGROUND_AQUATIC_ATMOSPHERIC + BACKGROUND_MAN_MADE
)

#: The classifier's 15 semantic templates, in the reference order.
SEMANTIC_TEMPLATES: tuple[str, ...] = (
    "a clean origami {}.",
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

#: Names of the visual prompts, in the fixed order the reference applies them.
VISUAL_PROMPTS: tuple[str, ...] = ("blur", "gray", "black", "circle", "rectangle", "contour")

#: Pascal VOC's 20 classes as the reference queries them (CLIP-ES-style rewrites).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird avian", "boat", "bottle", "bus", "car", "cat", "chair seat",
    "cow", "diningtable", "dog", "horse", "motorbike", "person with clothes,people,human",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor screen",
)  # fmt: skip

PROPOSAL_MODEL = "openai/clip-vit-base-patch16"
CLASSIFIER_MODEL = "openai/clip-vit-large-patch14"
MODES = ("semantic", "referring")
DTYPES = ("float32", "float16", "bfloat16")
CLASSIFIER_CROPS = ("center", "pad")


@dataclass(frozen=True)
class CaRConfig:
    """Every setting of a CaR run. Defaults are the paper's Pascal VOC configuration.

    Thresholds carry the reference config names: ``mask_threshold`` is η (binarise a proposal
    before drawing prompts), ``confidence_threshold`` is θ (drop a query whose classifier score
    is not above it), ``clipes_threshold`` is λ (CLIP-ES box threshold).
    """

    # Backbones: a Hugging Face hub name or a local folder holding a CLIPModel.
    proposal_model: str = PROPOSAL_MODEL
    classifier_model: str = CLASSIFIER_MODEL

    # The paper's three thresholds.
    mask_threshold: float = 0.4
    confidence_threshold: float = 0.6
    clipes_threshold: float = 0.4

    # Visual prompts drawn on the image for the classifier (applied in VISUAL_PROMPTS order).
    visual_prompts: tuple[str, ...] = ("circle", "blur")
    # Text.
    background_words: tuple[str, ...] = BACKGROUND_WORDS
    templates: tuple[str, ...] = SEMANTIC_TEMPLATES
    cam_template: str = "a clean origami {}."
    background_template: str = "a clean origami {}."
    # Exemplar queries (cliprnn.exemplars): an exemplar column's image–image cosine c becomes
    # a·c + b before the logit scale, per CLIP role (CAM head, classifier); (1, 0) leaves
    # image–image cosines as they are. Calibrated per model on training images.
    exemplar_cam_calibration: tuple[float, float] = (1.0, 0.0)
    exemplar_classifier_calibration: tuple[float, float] = (1.0, 0.0)

    # Proposal generator (Grad-CAM + CLIP-ES class-aware affinity).
    cam_layer: int = -1  # encoder block whose layer_norm1 output Grad-CAM reads
    affinity_layers: int = 8  # last blocks whose attention maps form the affinity
    sinkhorn_rounds: int = 3
    cam_input_multiple: int = 16  # faithful: CAM input sides round up to this; clean: patch size
    bg_factor: float = 1.0
    refine_affinity: bool = True  # False: plain Grad-CAM proposals (the paper's ablation)

    # Segmentation mode: "semantic" (queries compete) or "referring" (each phrase alone).
    mode: str = "semantic"
    # Thing/stuff passes (Pascal-Context-like vocabularies): queries named here are "stuff";
    # with mutual_background, stuff is background for things and things for stuff.
    stuff_queries: tuple[str, ...] = ()
    mutual_background: bool = False
    stuff_visual_prompts: tuple[str, ...] = ("blur", "gray")
    stuff_bg_factor: float = 1.0

    # Recurrence.
    max_steps: int = 10
    # Video (cliprnn.video.segment_video; images are unaffected): a frame's recurrence starts
    # from the previous labelled frame's kept queries, and from the full list every
    # refresh_every frames (0: never) and on a scene cut, when the classifier CLIP's image
    # embeddings of consecutive labelled frames have a cosine below scene_cut_threshold
    # (chosen on training clips, docs/video.md).
    carry_queries: bool = True
    refresh_every: int = 8
    scene_cut_threshold: float = 0.6

    # Dense CRF (deeplab-v2 defaults used by the reference).
    crf: bool = True
    crf_iterations: int = 10
    crf_pos_xy_std: float = 1.0
    crf_pos_w: float = 3.0
    crf_bi_xy_std: float = 67.0
    crf_bi_rgb_std: float = 3.0
    crf_bi_w: float = 4.0
    crf_mean_bgr: tuple[float, float, float] = (104.008, 116.669, 122.675)

    # Optional SAM refinement (segment-anything automatic masks + IoM/IoU matching).
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_h"
    sam_points_per_side: int = 64
    sam_pred_iou_thresh: float = 0.88
    sam_stability_score_thresh: float = 0.95
    sam_box_nms_thresh: float = 0.7
    sam_iom_threshold: float = 0.7
    sam_iou_threshold: float = 0.7
    sam_min_pred_threshold: float = 0.05

    # Input policy: images whose longer side exceeds this are resized for inference; masks
    # are returned at the input's full resolution. None disables the cap.
    max_image_side: int | None = 1024
    # Pixel budget per input image (width × height), checked from the file's header before it
    # is decoded: a larger image is refused with an ImageError naming it. It bounds a run's
    # memory (the masks are written at full resolution); None disables it.
    max_image_pixels: int | None = 40_000_000
    # Regions of a class smaller than this many pixels are merged into what surrounds them in
    # the labels a FiftyOne run writes (semantic mask and instances alike, so they agree);
    # ``CaR.segment`` returns the unmerged result. 0 keeps every region. Chosen on 60 training
    # scenes (scripts/min_region_sweep.py): 8-64 px leave mIoU unchanged (23.2) and remove
    # every speck of <= 4 px; instances per scene 20.2 (0) -> 3.9 (32).
    min_region_pixels: int = 32
    classifier_crop: str = "center"  # "center" (reference) or "pad" (pad to square)

    # Runtime.
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N", "mps"
    dtype: str = "float32"
    batch_size: int = 32  # prompted images per classifier forward
    # On-disk text embedding cache (with cache_text), shared by runs and workers: "auto" is
    # $CLIPRNN_CACHE_DIR/text, else ~/.cache/cliprnn/text; a folder; None or "" disables it.
    text_cache_dir: str | None = "auto"
    # Dense CRFs (and post-CRF work) run on this many workers alongside the next image's
    # GPU work in cliprnn.pipeline.segment_stream; 0 runs them in order (CaR.segment).
    crf_workers: int = 0

    # Reference-code behaviour ("faithful") versus the cleaned-up behaviour.
    faithful: bool = True

    # Speed switches (all output-identical; off reproduces the reference's schedule).
    reuse_dense_pass: bool = True  # blocks 1..L-1 and attention once per image
    batched_cam: bool = True  # one backward for all live queries
    cache_text: bool = True  # text embeddings cached across queries, steps, images
    classifier_single_pass: bool = True  # each prompted image through the tower once per step
    reuse_unchanged_prompts: bool = True  # same binarised mask -> same image embedding
    skip_single_query_classifier: bool = True  # one live query scores 1 by construction
    early_stop_clean: bool = True  # clean mode: a first step that drops nothing is final
    compact_weights: bool = True  # weights exact in fp16/bf16 held in 16 bits, computed in fp32
    group_templates: bool = True  # a query's classifier templates in one fixed text pass

    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("visual_prompts", "background_words", "templates", "stuff_queries",
                     "stuff_visual_prompts", "crf_mean_bgr", "exemplar_cam_calibration",
                     "exemplar_classifier_calibration"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, str):
                raise ConfigError(f"{name} must be a list of strings, not the string {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.text_cache_dir is not None and not isinstance(self.text_cache_dir, str):
            object.__setattr__(self, "text_cache_dir", str(self.text_cache_dir))  # a Path
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first parameter that is out of range."""
        for name in ("mask_threshold", "confidence_threshold", "clipes_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        for name in ("visual_prompts", "stuff_visual_prompts"):
            unknown = [p for p in getattr(self, name) if p not in VISUAL_PROMPTS]
            if unknown:
                raise ConfigError(
                    f"{name}: unknown visual prompt(s) {unknown}; "
                    f"choose from {list(VISUAL_PROMPTS)}"
                )
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.classifier_crop not in CLASSIFIER_CROPS:
            raise ConfigError(
                f"classifier_crop must be one of {list(CLASSIFIER_CROPS)}, "
                f"got {self.classifier_crop!r}"
            )
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ConfigError("templates must be a non-empty list of strings containing '{}'")
        for name in ("cam_template", "background_template"):
            if "{}" not in getattr(self, name):
                raise ConfigError(f"{name} must contain '{{}}', got {getattr(self, name)!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ConfigError(f"max_steps must be an integer >= 1, got {self.max_steps!r}")
        if self.max_image_side is not None and (
            not isinstance(self.max_image_side, int) or self.max_image_side < 32
        ):
            raise ConfigError("max_image_side must be None or an integer >= 32")
        budget = self.max_image_pixels
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                                   or budget < 1024):  # fmt: skip
            raise ConfigError(
                f"max_image_pixels must be None or an integer >= 1024, got {budget!r}"
            )
        mrp = self.min_region_pixels
        if isinstance(mrp, bool) or not isinstance(mrp, int) or mrp < 0:
            raise ConfigError(f"min_region_pixels must be an integer >= 0, got {mrp!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        workers = self.crf_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"crf_workers must be an integer >= 0, got {self.crf_workers!r}")
        if self.affinity_layers < 1 or self.sinkhorn_rounds < 1 or self.cam_input_multiple < 1:
            raise ConfigError(
                "affinity_layers, sinkhorn_rounds and cam_input_multiple must be >= 1"
            )
        for name in ("exemplar_cam_calibration", "exemplar_classifier_calibration"):
            ab = getattr(self, name)
            if (
                len(ab) != 2
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in ab)
                or ab[0] <= 0
            ):
                raise ConfigError(f"{name} must be (a, b): finite numbers with a > 0, got {ab!r}")
        if self.bg_factor <= 0 or self.stuff_bg_factor <= 0:
            raise ConfigError("bg_factor and stuff_bg_factor must be > 0")
        if self.crf_iterations < 0:
            raise ConfigError("crf_iterations must be >= 0")
        unit_interval = (
            "sam_iom_threshold", "sam_iou_threshold", "sam_min_pred_threshold",
            "sam_pred_iou_thresh", "sam_stability_score_thresh", "sam_box_nms_thresh",
        )  # fmt: skip
        for name in unit_interval:
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not isinstance(self.carry_queries, bool):
            raise ConfigError(f"carry_queries must be True or False, got {self.carry_queries!r}")
        every = self.refresh_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ConfigError(f"refresh_every must be an integer >= 0, got {every!r}")
        cut = self.scene_cut_threshold
        if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not -1.0 <= cut <= 1.0:
            raise ConfigError(f"scene_cut_threshold must be a number in [-1, 1], got {cut!r}")

    def replace(self, **overrides: Any) -> CaRConfig:
        """A copy with some fields changed (validated; unknown names raise ConfigError)."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown CaRConfig parameter(s): {unknown}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> CaRConfig:
        """A named configuration (see PRESETS), with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls().replace(**{**PRESETS[name](), **overrides})

    @classmethod
    def resolve(cls, config: ConfigLike = None, **overrides: Any) -> CaRConfig:
        """The validated configuration a ``config`` argument and field ``overrides`` stand for.

        ``config`` is one of:

        - ``None``: the :data:`DEFAULT_PRESET` (``"voc"``);
        - a preset name (see :data:`PRESETS`);
        - a ``CaRConfig``, returned as it is when there are no overrides;
        - a mapping of field values with an optional ``"preset"`` key (the preset they
          change; missing or ``None``: the default preset), as ``to_dict`` writes them.

        ``overrides`` are field values applied last, over the preset and the mapping. ``None``
        is a value like any other (``max_image_side=None`` lifts the cap), never "not given".
        Raises ConfigError for an unknown preset, an unknown field or a value out of range,
        and for a ``config`` of any other type. ``CaR(config, **overrides)``, the command line
        and the FiftyOne layer all build their configuration here.
        """
        if config is None:
            config = DEFAULT_PRESET
        if isinstance(config, CaRConfig):
            return config.replace(**overrides) if overrides else config
        if isinstance(config, str):
            return cls.preset(config, **overrides)
        if isinstance(config, Mapping):
            fields = dict(config)
            preset = fields.pop("preset", None) or DEFAULT_PRESET
            if not isinstance(preset, str):
                raise ConfigError(f"the config's preset must be a preset name, got {preset!r}")
            return cls.preset(preset, **{**fields, **overrides})
        raise ConfigError(
            "config must be a CaRConfig, a preset name, a dict of field values or None, "
            f"got {type(config).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (for provenance records)."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _mini_preset() -> dict[str, Any]:
    from cliprnn.assets import mini_model_paths  # local import: assets may be absent in dev

    proposal, classifier = mini_model_paths()
    return dict(MINI_PRESET, proposal_model=str(proposal), classifier_model=str(classifier))


#: Values of the bundled miniature CLIP preset other than the model paths, tuned on training
#: seeds (docs/mini_clip.md). The model saw only its six scene backgrounds, so those are its
#: background words; Grad-CAM reads the last block, as in the paper. Its single-head attention
#: is no affinity: the CLIP-ES refinement spread its maps (oracle-query mIoU 52 -> 35).
MINI_PRESET: dict[str, Any] = dict(
    mask_threshold=0.5, confidence_threshold=0.05, clipes_threshold=0.4, cam_layer=-1,
    refine_affinity=False,
    visual_prompts=("circle", "blur", "gray"), max_image_side=512,
    # `python -m cliprnn calibrate-exemplars` (3 exemplars per class, training seeds)
    exemplar_cam_calibration=(0.6155, 0.1192), exemplar_classifier_calibration=(0.7075, -0.0515),
    background_words=("sky", "grass", "water", "wall", "road", "ground"),
)  # fmt: skip

#: Named presets: the paper's datasets, a fast one, referring, and the bundled mini model.
#: Each is a function returning the field values it sets over the ``CaRConfig()`` defaults.
PRESETS: dict[str, Callable[[], dict[str, Any]]] = {
    "voc": lambda: dict(
        mask_threshold=0.4, confidence_threshold=0.6, clipes_threshold=0.4,
        visual_prompts=("circle", "blur"),
    ),
    "coco_object": lambda: dict(
        mask_threshold=0.5, confidence_threshold=0.3, clipes_threshold=0.5,
        visual_prompts=("blur", "gray"),
    ),
    # Paper θ = 0.2 (the released context.yaml uses 0.25); things blur+circle, stuff blur+gray.
    "context": lambda: dict(
        mask_threshold=0.6, confidence_threshold=0.2, clipes_threshold=0.4,
        visual_prompts=("blur", "circle"), stuff_visual_prompts=("blur", "gray"),
        mutual_background=True,
    ),
    # ViT-B/16 for both stages: about 5x cheaper classifier, the referring configs' backbones.
    "fast": lambda: dict(
        classifier_model=PROPOSAL_MODEL, mask_threshold=0.4, confidence_threshold=0.6,
        clipes_threshold=0.4, visual_prompts=("circle", "blur"),
    ),
    "refcoco": lambda: dict(
        mode="referring", classifier_model=PROPOSAL_MODEL, mask_threshold=0.5,
        confidence_threshold=0.3, clipes_threshold=0.5, visual_prompts=("circle", "blur"),
    ),
    "mini": _mini_preset,
}  # fmt: skip

#: The configuration ``CaR()``, ``CaRConfig.resolve(None)``, ``python -m cliprnn segment`` and
#: the FiftyOne layer use when none is named: the paper's Pascal VOC configuration with OpenAI's
#: CLIPs from the Hugging Face hub (ViT-B/16 proposals, ViT-L/14 classifier), which is also what
#: ``CaRConfig()`` holds. It is the configuration the paper reports and the one meant for real
#: photographs; the bundled ``"mini"`` CLIPs run offline but know only generated scenes
#: (docs/mini_clip.md), so they are chosen by name.
DEFAULT_PRESET = "voc"

#: What a ``config`` argument may be (see :meth:`CaRConfig.resolve`).
ConfigLike: TypeAlias = CaRConfig | str | Mapping[str, Any] | None
