"""A dense-CRF worker process: reads CRF jobs on stdin, writes the marginals on stdout.

Started by :class:`cliprnn.pipeline.CrfProcessPool` as ``python -c "...main()"``, never through
``multiprocessing``, so it never re-imports the parent's main script. Each message is an
8-byte little-endian length followed by a pickle: a job is ``(image_u8, probs, params)``, a
reply ``("ok", marginals)`` or ``("error", message)``. End of input ends the process.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any, BinaryIO


def read_message(stream: BinaryIO) -> Any:
    """One length-prefixed pickle from ``stream``; EOFError at a clean end of input."""
    head = stream.read(8)
    if not head:
        raise EOFError
    size = int.from_bytes(head, "little")
    data = stream.read(size)
    if len(head) < 8 or len(data) < size:
        raise EOFError("truncated message")
    return pickle.loads(data)


def write_message(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)
    stream.flush()


def main() -> None:
    from types import SimpleNamespace

    from cliprnn.postprocess import dense_crf

    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
    jobs = sys.stdin.buffer
    while True:
        try:
            image_u8, probs, params = read_message(jobs)
        except EOFError:
            return
        try:
            reply: Any = ("ok", dense_crf(image_u8, probs, SimpleNamespace(**params)))
        except Exception as exc:  # reported to the parent, which raises it there
            reply = ("error", f"{type(exc).__name__}: {exc}")
        write_message(replies, reply)


if __name__ == "__main__":
    main()
