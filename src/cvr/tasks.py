"""What a run learns in the click -> conversion funnel: the label, the rows, the heads.

| task    | trains                                  | on rows         | heads                |
|---------|-----------------------------------------|-----------------|----------------------|
| `ctr`   | click                                   | all impressions | pctr                 |
| `cvr`   | conversion                              | clicked only    | pcvr (the naive CVR) |
| `ctcvr` | click AND conversion                    | all impressions | pctcvr               |
| `esmm`  | click and click AND conversion, jointly | all impressions | pctr, pcvr, pctcvr   |

`cvr` is the classic recipe and is biased where it scores all impressions (it never saw the
unclicked ones); `esmm` learns pCVR through pCTR x pCVR over every impression. Each task's
`primary` head, on its own rows, is what the generic metric names (`val/auc`, ...) mean.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS = ("ctr", "cvr", "ctcvr", "esmm")
_PRIMARY = {"ctr": "pctr", "cvr": "pcvr", "ctcvr": "pctcvr", "esmm": "pcvr"}
_DEFAULT_MONITOR = {
    "ctr": "val/ctr_auc",
    "cvr": "val/cvr_auc_clicked",
    "ctcvr": "val/ctcvr_auc",
    "esmm": "val/cvr_auc_clicked",
}


class TaskError(ValueError):
    """A task that cannot run on these data; the message names the key and what was expected."""


@dataclass(frozen=True)
class Task:
    name: str
    #: The validation metric early stopping and the best checkpoint follow.
    monitor: str
    monitor_mode: str = "max"
    click_label: str = "click"
    conversion_label: str = "conversion"

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise TaskError(f"task.name: expected one of {list(TASKS)}, got {self.name!r}")
        if self.monitor_mode not in ("max", "min"):
            raise TaskError(f"task.monitor_mode: expected max or min, got {self.monitor_mode!r}")

    @property
    def primary(self) -> str:
        """The head whose metrics the generic names (`val/auc`, ...) report."""
        return _PRIMARY[self.name]

    @property
    def clicked_only(self) -> bool:
        """Train on clicked impressions only (and score the primary head there)."""
        return self.name in ("cvr", "esmm")

    @property
    def train_label(self) -> str:
        """The store label a single-head task trains on (ESMM trains on both)."""
        return self.click_label if self.name == "ctr" else self.conversion_label

    def needed_labels(self) -> list[str]:
        if self.name == "ctr":
            return [self.click_label]
        return [self.click_label, self.conversion_label]

    def check_labels(self, available: list[str], where: str) -> None:
        missing = [label for label in self.needed_labels() if label not in available]
        if missing:
            raise TaskError(
                f"task={self.name} needs the labels {self.needed_labels()}, but {where} has "
                f"only {available} (missing {missing})"
            )


def make_task(name: str, monitor: str | None = None, monitor_mode: str = "max") -> Task:
    """A Task with its default monitor (`val/cvr_auc_clicked` for esmm) unless one is given."""
    if name not in TASKS:
        raise TaskError(f"task.name: expected one of {list(TASKS)}, got {name!r}")
    return Task(name, monitor or _DEFAULT_MONITOR[name], monitor_mode)


def task_of_label(label: str, labels: list[str]) -> tuple[str, str]:
    """(task name, a sentence saying so) for the old `label=` key on data with `labels`.

    `label=conversion` on funnel data trains click AND conversion over all impressions, which is
    CTCVR, not CVR; a single-label dataset's label is a CTR task whatever it is called.
    """
    has_funnel = "click" in labels and "conversion" in labels
    if has_funnel and label == "conversion":
        return "ctcvr", (
            "label=conversion trains click AND conversion over all impressions: that is "
            "task=ctcvr (task=cvr trains conversion on clicked rows, task=esmm both towers)"
        )
    return "ctr", f"label={label} trains {label} over all impressions: that is task=ctr"
