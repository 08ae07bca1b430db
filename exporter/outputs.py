"""The output files of one command, committed together or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when the two paths name one file (the same inode, or the same resolved path if not there yet)."""
    a, b = Path(a), Path(b)
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def commit_files(files: Mapping[Path, bytes]) -> None:
    """Write every payload to its path, all or none.

    Each payload goes to a temporary name beside its target (missing folders are created), then all are
    renamed into place. On any failure, Ctrl-C included, the temporaries are removed, targets already
    replaced get their previous content back, new targets are removed, and folders this call created
    are removed again: the disk is as it was.
    """
    tag = f"{os.getpid()}"
    created: list[Path] = []
    temps: dict[Path, Path] = {}
    backups: dict[Path, Path] = {}
    placed: list[Path] = []
    try:
        for target in files:
            missing = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
            for folder in reversed(missing):
                folder.mkdir()
                created.append(folder)
        for target, payload in files.items():
            tmp = target.with_name(f".{target.name}.{tag}.tmp")
            temps[target] = tmp
            tmp.write_bytes(payload)
        for target in files:
            if target.exists():
                backup = target.with_name(f".{target.name}.{tag}.bak")
                try:
                    os.link(target, backup)  # the target stays in place until it is replaced
                except OSError:
                    shutil.copy2(target, backup)
                backups[target] = backup
        for target, tmp in temps.items():
            os.replace(tmp, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            if target in backups:
                os.replace(backups.pop(target), target)
            else:
                target.unlink(missing_ok=True)
        for path in (*temps.values(), *backups.values()):
            path.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    for backup in backups.values():
        backup.unlink(missing_ok=True)
