"""FiftyOne plugin ``@cliprnn/clip-as-rnn`` and remote zoo model source of this repository.

FiftyOne imports this file as a plugin module and calls :func:`register`; as a remote model
source (``foz.register_zoo_model_source``, with ``manifest.json`` beside this file) it imports
it again by path and calls :func:`download_model` and :func:`load_model`. Everything heavy is
imported inside the functions so that listing plugins or zoo models stays cheap (no torch, no
models). The zoo executes this file as a package named after the source (``cliprnn.clip-as-rnn``,
its folder under ``fo.config.model_zoo_dir`` as the package path), so the relative imports of
:func:`register` still resolve; the zoo hooks import only the installed ``cliprnn`` library.
"""


def register(p):
    """Register the plugin's operators with FiftyOne."""
    from .operators.calibrate import Calibrate
    from .operators.check import CheckField
    from .operators.edits import ApplyMaskEdits, EditMaskClasses
    from .operators.exemplars import ExemplarSets
    from .operators.runs import ResumeRun, ScheduledRuns, SegmentShard
    from .operators.segment import Segment

    p.register(Segment)
    p.register(ApplyMaskEdits)
    p.register(EditMaskClasses)
    p.register(SegmentShard)
    p.register(ResumeRun)
    p.register(ExemplarSets)
    p.register(CheckField)
    p.register(ScheduledRuns)
    p.register(Calibrate)


def download_model(model_name, model_path):
    """Zoo hook: mark ``model_name`` downloaded at ``model_path`` (see cliprnn.fiftyone.zoo).

    FiftyOne downloads a model before it checks the model's requirements, so without the
    cliprnn library this writes nothing and returns: the requirement check that follows then
    says how to install it (or installs it, with ``install_requirements=True``).
    """
    import importlib.util

    if importlib.util.find_spec("cliprnn") is None:
        import logging

        logging.getLogger(__name__).warning(
            "Zoo model '%s' needs the cliprnn library: pip install "
            "'cliprnn @ git+https://github.com/cliprnn/cliprnn'",
            model_name,
        )
        return

    from cliprnn.fiftyone.zoo import download_model as _download_model

    _download_model(model_name, model_path)


def load_model(model_name, model_path, **kwargs):
    """Zoo hook: the CaRModel of ``model_name``; ``classes=[...]`` are its text queries."""
    from cliprnn.fiftyone.zoo import load_model as _load_model

    return _load_model(model_name, model_path, **kwargs)
