"""Leftover temporaries: what a writer that died mid-write left behind, and reclaiming it.

Artifacts are written under a temporary sibling name that carries the writer's pid
(`.<name>.tmp-<pid>-<8 hex>` folders from `atomic_directory`, `<file>.tmp-<pid>-<8 hex>`
checkpoint files), and prune renames a doomed snapshot to `.<name>.deleting-<8 hex>` before
deleting it. A temporary whose writer process is gone (on this machine) is abandoned and can be
removed; one whose writer is alive is being written and is never touched, so a create racing
a prune or gc still finishes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_TMP = re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}$")
_DELETING = re.compile(r"\.deleting-[0-9a-f]{8}$")


@dataclass(frozen=True)
class Temporary:
    path: Path
    pid: int | None  # None: a prune's half-deleted folder (its deleter may be gone)
    alive: bool

    @property
    def state(self) -> str:
        if self.pid is None:
            return "half-deleted by prune"
        return (
            f"being written (pid {self.pid})" if self.alive else f"abandoned (pid {self.pid} gone)"
        )


def process_alive(pid: int) -> bool:
    """True if a process with this pid exists on this machine (signal 0 probes, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def temporaries(root: str | os.PathLike, recursive: bool = False) -> list[Temporary]:
    """Temporary and half-deleted entries under `root` (only its top level unless `recursive`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    entries = (
        (Path(top) / name for top, dirs, files in os.walk(root) for name in (*dirs, *files))
        if recursive
        else root.iterdir()
    )
    for path in entries:
        match = _TMP.search(path.name)
        if match:
            pid = int(match.group(1))
            found.append(Temporary(path, pid, pid == os.getpid() or process_alive(pid)))
        elif _DELETING.search(path.name):
            found.append(Temporary(path, None, False))
    return sorted(found, key=lambda t: str(t.path))


def remove_abandoned(root: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporaries under `root` whose writer is gone; returns what was removed.

    Entries of a live writer are kept. An entry that vanishes meanwhile (its writer renamed it
    into place, or another gc removed it) is skipped.
    """
    removed = []
    for tmp in temporaries(root, recursive):
        if tmp.alive:
            continue
        try:
            if tmp.path.is_dir() and not tmp.path.is_symlink():
                shutil.rmtree(tmp.path)
            else:
                tmp.path.unlink()
        except FileNotFoundError:
            continue
        log.info("removed %s (%s)", tmp.path, tmp.state)
        removed.append(tmp.path)
    return removed
