"""The segment form refuses what would fail after it closed (blank queries, unusable output
folders), puts its errors at the top, says what a run writes and where; a finished run gives
the App the run's colours at once."""

from __future__ import annotations

from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.executor import ExecutionContext, Executor

pytestmark = pytest.mark.fiftyone

URI = "@cliprnn/clip-as-rnn/segment"
QUERIES = ["red circle", "blue square"]


def _ctx(coll, params: dict, selected: list[str] | None = None, **extra) -> ExecutionContext:
    view = coll.view() if isinstance(coll, fo.Dataset) else coll
    req = dict(dataset_name=view._root_dataset.name, view=view._serialize(), params=params,
               selected=selected or [], **extra)  # fmt: skip
    return ExecutionContext(request_params=req, executor=Executor())


def _form(coll, params: dict, selected: list[str] | None = None) -> dict:
    return foo.get_operator(URI).resolve_input(_ctx(coll, params, selected)).type.properties


def _errors(props: dict) -> dict[str, str]:
    return {k: p.error_message for k, p in props.items() if p.invalid}


def _mini(tiny_config) -> dict:
    return dict(advanced=True, proposal_model=tiny_config.proposal_model,
                classifier_model=tiny_config.classifier_model, device="cpu")  # fmt: skip


def test_a_whitespace_only_query_is_refused_in_the_form(make_dataset, tiny_config) -> None:
    ds = make_dataset(1)
    props = _form(ds, {"query_text": "  \n\t ", **_mini(tiny_config)})
    assert _errors(props) == {
        "query_text_error": "The text queries are blank: type at least one query"
    }
    assert next(iter(props)) == "query_text_error"  # at the top, not below the fold
    # blank lines between real queries are dropped, not queried
    props = _form(ds, {"query_text": "red circle\n  \nblue square\n", **_mini(tiny_config)})
    assert _errors(props) == {}
    from operators.segment_params import run_kwargs

    assert run_kwargs({"query_text": "red circle\n  \nblue square\n"})["queries"] == QUERIES


def test_output_folders_that_cannot_be_used_are_refused_in_the_form(
    make_dataset, tiny_config, tmp_path
) -> None:
    ds = make_dataset(2)
    base = {"query_text": "red circle", **_mini(tiny_config)}
    media = Path(ds.first().filepath).parent
    props = _form(ds, {**base, "output_dir": str(media / "masks")})
    (message,) = _errors(props).values()
    assert next(iter(props)) == "output_dir_error"
    assert f"is inside the folder '{media}' that holds the images" in message
    assert "allow_media_dir" not in message  # the form's checkbox, not the SDK's argument
    assert "Allow it inside the images' folders" in message
    assert not (media / "masks").exists()  # the form creates nothing
    assert _errors(_form(ds, {**base, "output_dir": str(media / "masks"),
                              "allow_media_dir": True})) == {}  # fmt: skip
    # unwritable (a read-only filesystem: the tests may run as root, who may write anywhere)
    props = _form(ds, {**base, "output_dir": "/proc/cliprnn-masks"})
    assert next(iter(props)) == "output_dir_error"
    assert "'/proc/cliprnn-masks' is not writable" in props["output_dir_error"].error_message
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    props = _form(ds, {**base, "output_dir": str(a_file)})
    assert "is a file, not a folder" in props["output_dir_error"].error_message
    props = _form(ds, {**base, "output_dir": "relative/masks"})
    assert "must be an absolute path" in props["output_dir_error"].error_message
    assert _errors(_form(ds, {**base, "output_dir": str(tmp_path / "new" / "masks")})) == {}
    assert not (tmp_path / "new").exists()


def test_the_form_says_what_a_run_writes_and_on_which_samples(make_dataset, tiny_config) -> None:
    ds = make_dataset(3)
    base = {"query_text": "red circle", **_mini(tiny_config)}
    ids = ds.values("id")
    props = _form(ds, {**base, "view_target": "SELECTED_SAMPLES"}, selected=ids[:2])
    writes = props["writes"].view.label
    assert writes.startswith(
        "Writes fields 'cliprnn', 'cliprnn_det', 'cliprnn_scores' (and 'cliprnn_error' for "
        "failing samples) on the 2 selected samples"
    )
    assert list(props)[:2] == ["view_target", "writes"]  # first thing under the target
    props = _form(ds.limit(1), {**base, "view_target": "CURRENT_VIEW"})
    assert "on the current view (1 of 3 samples)" in props["writes"].view.label
    props = _form(ds, {**base, "view_target": "DATASET", "label_field": "x",
                       "outputs": ["segmentation", "heatmaps"]})  # fmt: skip
    assert props["writes"].view.label.startswith(
        "Writes fields 'x', 'x_scores', x_heat_<query> (one per query) (and 'x_error' for "
        "failing samples) on the whole dataset (3 samples)"
    )


def test_a_finished_run_gives_the_app_its_colours_at_once(make_dataset, tiny_config) -> None:
    ds = make_dataset(1)
    params = {"query_text": "\n".join(QUERIES), "label_field": "car", **_mini(tiny_config)}
    messages = list(foo.get_operator(URI).execute(_ctx(ds, params)))
    triggers = {
        m.body.operator_uri: m.body.params for m in messages if hasattr(m.body, "operator_uri")
    }
    assert "refresh_colors" in triggers
    sent = {f["path"]: f for f in triggers["set_color_scheme"]["fields"]}
    ds.reload()
    stored = {f["path"]: f for f in ds.app_config.color_scheme.fields}
    assert sent["car"] == stored["car"] and sent["car_det"] == stored["car_det"]
    assert {c["intTarget"] for c in sent["car"]["maskTargetsColors"]} == {1, 2}
    assert triggers["set_color_scheme"]["color_by"] == ds.app_config.color_scheme.color_by


def test_the_progress_view_says_its_done_button_does_not_stop_the_run(
    make_dataset, tiny_config
) -> None:
    ds = make_dataset(2)
    params = {"query_text": "red circle", "batch_size": 1, **_mini(tiny_config)}
    messages = list(foo.get_operator(URI).execute(_ctx(ds, params)))
    labels = [
        (m.body.params["progress"], m.body.params["label"])
        for m in messages
        if getattr(m.body, "operator_uri", None) == "set_progress"
    ]
    assert labels[-1] == (1.0, "Segmented 2/2 samples")
    running = [label for progress, label in labels if progress < 1]
    assert running and all(
        label.endswith("(Done hides this view; the run goes on)") for label in running
    )


def test_resume_and_exemplar_forms_say_what_they_write(make_dataset, tiny_config) -> None:
    from cliprnn.fiftyone.shards import queue_sharded_run

    ds = make_dataset(3)
    resume = "@cliprnn/clip-as-rnn/resume_run"
    queue_sharded_run(ds, 2, queue=False, queries=QUERIES, label_field="car",
                      config=tiny_config)  # fmt: skip

    def form(uri: str, params: dict, selected: list[str] | None = None) -> dict:
        return foo.get_operator(uri).resolve_input(_ctx(ds, params, selected)).type.properties

    assert form(resume, {})["writes"].view.label == (
        "Resume writes 'car' (and its companion fields) on the 3 samples of this run not "
        "written yet; the 0 samples written and all other samples are not changed"
    )
    assert form(resume, {"action": "cancel"})["writes"].view.label.startswith(
        "Cancel writes no labels: it frees 'car' for other runs"
    )
    foo.get_operator(resume)(ds, "car", cancel=True)
    exemplars = "@cliprnn/clip-as-rnn/exemplar_sets"
    props = form(exemplars, {}, selected=ds.values("id")[:2])
    assert props["writes"].view.label.endswith(
        "no sample, label or field of the dataset is changed"
    )
