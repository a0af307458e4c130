"""The record of an elastic run's worker groups: how many workers trained from which step, and why.

Ray Train restarts an elastic run's worker group (from the latest checkpoint) when a worker is
lost, with the workers that fit then, and again, bigger, when resources return. Each new group's
ranks report its size once at their start (`GROUP_KEY`); the driver's MLflow callback turns that
into the metric `train/workers` and one entry of the tag `pixelrnn.worker_groups`, with the reason
given here. Pure: no Ray, no MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP_KEY = "workers/group_started"  # only in the report a new worker group makes at its start
WORKERS_METRIC = "train/workers"
IMAGES_METRIC = "train/images"
GROUPS_TAG = "pixelrnn.worker_groups"
TAG_CHARS = 5000  # MLflow's tag values are bounded; the latest entries are kept
ERROR_CHARS = 300  # of a lost worker's error, per entry


@dataclass
class WorkerGroups:
    """Successive worker groups of one run, as the text of `GROUPS_TAG`.

    Attributes:
        text: the entries so far ("" for a new run; a resumed run continues its tag), each
            "<workers> workers from step <step> (<reason>)", joined by "; ".
        workers: the size of the latest group this driver saw (0: none yet).
        lost: the error of a worker lost since that group started ("" if none).
    """

    text: str = ""
    workers: int = 0
    lost: str = ""

    def worker_lost(self, error: str) -> None:
        """Note the error a worker of the current group failed with (the first one counts)."""
        if not self.lost:
            self.lost = " ".join(error.split())[:ERROR_CHARS]

    def started(self, workers: int, step: int) -> str:
        """Record a new group of `workers` starting at optimizer step `step`; the tag's text."""
        if not self.workers:
            reason = "start" if step == 0 else "resumed"
        elif self.lost:
            reason = f"worker lost: {self.lost}"
        elif workers > self.workers:
            reason = "grew: more workers fit"
        elif workers < self.workers:
            reason = "shrank: fewer workers fit"
        else:
            reason = "restarted"
        entry = f"{workers} workers from step {step} ({reason})"
        self.text = f"{self.text}; {entry}" if self.text else entry
        if len(self.text) > TAG_CHARS:
            self.text = "..." + self.text[-(TAG_CHARS - 3) :]
        self.workers, self.lost = workers, ""
        return self.text
