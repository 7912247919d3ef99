"""What a segmentation run reports: its progress, its summary, and the errors that stop it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cliprnn.errors import CaRError


class SampleError(CaRError, RuntimeError):
    """Segmenting one sample failed and ``skip_failures`` was off; names the sample."""

    def __init__(self, sample_id: str, filepath: str, cause: BaseException) -> None:
        super().__init__(
            f"sample {sample_id} ({filepath}) failed: {type(cause).__name__}: {cause}. "
            "Results of earlier samples are kept; rerun with skip_failures=True to skip failing "
            "samples, or skip_existing=True to resume"
        )
        self.sample_id = sample_id
        self.filepath = filepath
        self.cause = cause


class DatabaseError(CaRError, RuntimeError):
    """The database could not be reached (or refused a write) while the run wrote results."""

    def __init__(self, written: int, pending: int, cause: BaseException) -> None:
        super().__init__(
            f"the database could not take the results of {pending} sample(s) "
            f"({type(cause).__name__}: {cause}). The {written} sample(s) written before are "
            "kept, each whole; once the database is back, rerun with skip_existing=True to "
            "complete the run"
        )
        self.written = written
        self.cause = cause


@dataclass
class Progress:
    """How far a run has got: samples done (written or failed) out of ``total``."""

    done: int
    total: int
    failed: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def label(self) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"Segmented {self.done}/{self.total} samples{failed}"


@dataclass
class RunSummary:
    """What a run did: fields written, classes, counts, and the first errors."""

    label_field: str
    fields: list[str]
    mask_targets: dict[int, str]
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (sample id, message), first 20
    seconds: float = 0.0
    run_key: str = ""
    output_dir: str | None = None
    no_queries: list[str] = field(default_factory=list)  # ids skipped: no labels to query

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (mask_targets keys as strings)."""
        out = asdict(self)
        out["mask_targets"] = {str(k): v for k, v in self.mask_targets.items()}
        out["errors"] = [list(e) for e in self.errors]
        return out
