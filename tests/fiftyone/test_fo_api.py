"""The spellings of segment_collection (new keyword options, the old ones deprecated), the
run a collection gets (make_run), and the defaults the API and the App's form share."""

from __future__ import annotations

import inspect
import re
import warnings

import fiftyone.operators as foo
import numpy as np
import pytest

from cliprnn.fiftyone import SegmentationRun, make_run, run_info, segment_collection
from cliprnn.fiftyone import defaults as D

URI = "@cliprnn/clip-as-rnn"
QUERIES = ["red circle", "blue square", "green triangle"]


def _masks(ds, field: str) -> dict[str, np.ndarray]:
    return {s.id: s[field].get_mask() for s in ds.select_fields(field)}


def test_the_new_spelling_writes_the_default_fields_without_warnings(
    make_dataset, tiny_config
) -> None:
    ds = make_dataset(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        summary = segment_collection(ds, QUERIES, config=tiny_config, progress=False)
    assert summary.label_field == "cliprnn"
    assert summary.fields == ["cliprnn", "cliprnn_det", "cliprnn_scores"]
    assert ds.count("cliprnn") == ds.count("cliprnn_det") == 2


def test_old_positional_arguments_warn_and_still_work(make_dataset, tiny_config) -> None:
    ds = make_dataset(1)
    segment_collection(ds, QUERIES, label_field="new", config=tiny_config, outputs=["segmentation"],
                       progress=False)  # fmt: skip
    with pytest.warns(FutureWarning, match=r"classes_from=\.\.\., label_field=\.\.\., config="):
        summary = segment_collection(ds, QUERIES, None, "old", tiny_config, False, False, False,
                                     ["segmentation"], progress=False)  # fmt: skip
    assert summary.fields == ["old", "old_scores"]
    for sid, mask in _masks(ds, "new").items():
        np.testing.assert_array_equal(_masks(ds, "old")[sid], mask)
    with pytest.raises(TypeError, match="multiple values for 'label_field'"):
        segment_collection(ds, QUERIES, None, "x", label_field="y", progress=False)


def test_config_fields_as_keywords_warn_with_the_config_spelling(make_dataset, tiny_config):
    ds = make_dataset(1)
    with pytest.warns(FutureWarning, match=r"config=config\.replace\(confidence_threshold=0\.3\)"):
        segment_collection(ds, QUERIES, label_field="a", config=tiny_config,
                           outputs=["segmentation"], confidence_threshold=0.3,
                           progress=False)  # fmt: skip
    assert run_info(ds, "a")["config"]["confidence_threshold"] == 0.3
    tiny = dict(
        proposal_model=tiny_config.proposal_model,
        classifier_model=tiny_config.classifier_model,
        device="cpu",
        max_image_side=64,
    )
    expected = re.escape(f"config={ {'preset': 'voc', **tiny}!r}")
    with pytest.warns(FutureWarning, match=expected):
        segment_collection(ds, QUERIES, label_field="b", outputs=["segmentation"], progress=False,
                           **tiny)  # fmt: skip
    expected = re.escape(f"config={ {'preset': 'voc', **tiny, 'mask_threshold': 0.4}!r}")
    with pytest.warns(FutureWarning, match=expected):
        segment_collection(ds, QUERIES, label_field="c", outputs=["segmentation"],
                           config={"preset": "voc", **tiny}, mask_threshold=0.4,
                           progress=False)  # fmt: skip
    assert run_info(ds, "c")["config"]["mask_threshold"] == 0.4
    for name in ("a", "b", "c"):
        assert ds.count(name) == 1
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        segment_collection(ds, QUERIES, config=tiny_config, no_such_option=1)


def test_make_run_picks_the_image_run_and_refuses_nothing_else(make_dataset, tiny_config):
    ds = make_dataset(1)
    run = make_run(ds, QUERIES, config=tiny_config, load_model=False)
    assert type(run) is SegmentationRun and run.fields.label_field == D.DEFAULT_LABEL_FIELD


def test_one_set_of_defaults_for_the_api_the_run_and_the_form(make_dataset) -> None:
    from fiftyone.operators.executor import ExecutionContext

    from operators.segment_params import run_kwargs

    api = inspect.signature(segment_collection).parameters
    run = inspect.signature(SegmentationRun.__init__).parameters
    for name, value in [
        ("label_field", D.DEFAULT_LABEL_FIELD),
        ("outputs", D.DEFAULT_OUTPUTS),
        ("instances", D.DEFAULT_INSTANCES),
        ("batch_size", D.DEFAULT_BATCH_SIZE),
        ("num_workers", D.DEFAULT_NUM_WORKERS),
        ("prefetch_ahead", D.DEFAULT_PREFETCH_AHEAD),
    ]:
        assert api[name].default == run[name].default == value, name
    assert D.DEFAULT_LABEL_FIELD == "cliprnn"
    assert set(D.DEFAULT_OUTPUTS) == {"segmentation", "detections"}
    sdk = run_kwargs({})
    assert (sdk["label_field"], sdk["outputs"], sdk["config"], sdk["instances"]) == (
        D.DEFAULT_LABEL_FIELD,
        list(D.DEFAULT_OUTPUTS),
        D.DEFAULT_PRESET,
        D.DEFAULT_INSTANCES,
    )
    ds = make_dataset(1)
    req = dict(dataset_name=ds.name, params=dict(queries=QUERIES, preset="mini"))
    form = foo.get_operator(f"{URI}/segment").resolve_input(ExecutionContext(request_params=req))
    props = form.type.properties
    assert props["label_field"].default == D.DEFAULT_LABEL_FIELD
    assert props["outputs"].default == list(D.DEFAULT_OUTPUTS)
    assert props["batch_size"].default == D.DEFAULT_BATCH_SIZE
