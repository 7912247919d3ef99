"""The "Check a segmentation field" operator: the field and target in the form, what it reads
and writes said there, the report (counts, first broken samples with reasons), and the broken
samples selected in the App."""

from __future__ import annotations

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
from fiftyone.operators.executor import ExecutionContext

from cliprnn.fiftyone import segment_collection

pytestmark = pytest.mark.fiftyone

URI = "@cliprnn/clip-as-rnn/check_field"
QUERIES = ["red circle", "blue square"]


def _form(ds: fo.Dataset, params: dict, selected: list[str] | None = None) -> dict:
    req = dict(dataset_name=ds.name, view=ds.view()._serialize(), params=params,
               selected=selected or [])  # fmt: skip
    return foo.get_operator(URI).resolve_input(ExecutionContext(request_params=req)).type.properties


def test_check_field_reports_and_selects_the_broken_samples(make_dataset, tiny_config) -> None:
    ds = make_dataset(3)
    segment_collection(ds, QUERIES, label_field="car", config=tiny_config, progress=False,
                       outputs=["segmentation", "detections"])  # fmt: skip
    ds.add_sample_field("gt", fo.EmbeddedDocumentField, fo.Segmentation)  # not a run's field
    ids = ds.values("id")

    props = _form(ds, {}, selected=ids[:1])
    assert [c.value for c in props["label_field"].view.choices] == ["car"]
    assert props["writes"].view.label == (
        "Reads 'car' on the whole dataset (3 samples); writes nothing; selects the broken "
        "samples in the App"
    )
    props = _form(ds, {"view_target": "SELECTED_SAMPLES", "select_broken": False}, ids[:1])
    assert props["writes"].view.label == "Reads 'car' on the 1 selected sample; writes nothing"

    clean = foo.execute_operator(URI, dict(dataset=ds, params={"label_field": "car"}))
    assert clean.result["broken"] == 0 and clean.result["checked"] == 3
    assert clean.result["message"] == "'car': all 3 samples consistent"
    assert "set_selected_samples" not in {r.operator_uri for r in clean.executor._requests}

    # a mask value the field has no class for, on the second sample
    sample = ds[ids[1]]
    mask = sample["car"].get_mask().copy()
    mask[0, 0] = 9
    sample["car"] = fo.Segmentation(mask=mask)
    sample.save()
    before = {s.id: s["car"].get_mask().copy() for s in ds}
    result = foo.execute_operator(URI, dict(dataset=ds, params={"label_field": "car"}))
    out = result.result
    assert out["checked"] == 3 and out["broken"] == 1 and out["broken_ids"] == [ids[1]]
    assert out["message"] == "'car': 1 of 3 samples broken (selected)"
    assert out["samples"][0].startswith(f"{ids[1]}: ") and "9" in out["samples"][0]
    requests = {r.operator_uri: r.params for r in result.executor._requests}
    assert [s["id"] for s in requests["set_selected_samples"]["samples"]] == [ids[1]]
    assert requests["notify"]["variant"] == "warning"
    for s in ds:  # nothing written
        np.testing.assert_array_equal(s["car"].get_mask(), before[s.id])

    # on the selection only: the broken sample is not in it
    result = foo.execute_operator(
        URI,
        dict(dataset=ds, selected=[ids[0]], view_target="SELECTED_SAMPLES",
             params={"label_field": "car"}),
    )  # fmt: skip
    assert result.result["checked"] == 1 and result.result["broken"] == 0
