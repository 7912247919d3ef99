"""FiftyOne plugin ``@cliprnn/clip-as-rnn``: the operators over :mod:`cliprnn.fiftyone`.

FiftyOne imports this file as a plugin module and calls :func:`register`. Operator classes are
imported inside it so that listing plugins stays cheap (no torch, no models).
"""


def register(p):
    """Register the plugin's operators with FiftyOne."""
    from .operators.edits import ApplyMaskEdits, EditMaskClasses
    from .operators.segment import Segment

    p.register(Segment)
    p.register(ApplyMaskEdits)
    p.register(EditMaskClasses)
