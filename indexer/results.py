"""What the library hands back: search hits and the summary of an indexing run."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One search result (or one ``Index.get``), by stable catalog id."""

    id: int
    score: float
    kind: str  # "image" | "text"
    path: str | None = None  # absolute path of the image for kind == "image"
    text: str | None = None  # for kind == "text"
    width: int | None = None
    height: int | None = None
    duplicates: tuple[str, ...] = ()  # paths of byte-identical copies folded into this hit
    taken: str | None = None  # EXIF date taken, ISO 8601 (images)
    camera: str | None = None  # EXIF camera make and model (images)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    """A file that could not be indexed, and why (``reason`` is one of ``decode.REASONS``)."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class IndexReport:
    """Counts of one ``add_images`` / ``add_texts`` / ``remove`` run.

    ``indexed`` counts files (or texts) that got a vector in this run: ``embedded`` ran the encoder,
    ``reused`` copied the vector of identical content already in the catalog (duplicates, changed
    files reverted). ``renamed`` files kept their id and vector under a new path; they are counted
    in ``indexed`` too. ``unchanged`` were already indexed as they are. ``ids`` are the catalog ids
    of the ``indexed`` items.
    """

    indexed: int = 0
    embedded: int = 0
    reused: int = 0
    renamed: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_files: list[Skipped] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # ids given a (new) vector or path in this run
    seconds: float = 0.0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def embedded_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def skip(self, path: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        self.skipped_files.append(Skipped(path, reason, detail))

    def to_dict(self) -> dict[str, Any]:
        return {
            "indexed": self.indexed,
            "embedded": self.embedded,
            "reused": self.reused,
            "renamed": self.renamed,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "skipped": self.skipped_total,
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "skipped_files": [asdict(s) for s in self.skipped_files],
            "ids": list(self.ids),
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        """One line: indexed / unchanged / skipped (by reason) / removed."""
        parts = [f"indexed {self.indexed}"]
        detail = [
            f"{n} {what}"
            for n, what in (
                (self.embedded, "embedded"),
                (self.reused, "reused"),
                (self.renamed, "renamed"),
            )
            if n
        ]
        if detail:
            parts[0] += f" ({', '.join(detail)})"
        parts.append(f"unchanged {self.unchanged}")
        skipped = f"skipped {self.skipped_total}"
        if self.skipped:
            skipped += " (" + ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) + ")"
        parts.append(skipped)
        parts.append(f"removed {self.removed}")
        line = " / ".join(parts)
        if self.seconds:
            line += f" in {self.seconds:.1f} s"
            if self.embedded:
                line += f" ({self.embedded_per_s:.1f} embedded/s)"
        return line
