"""One writer per output: an exclusive lock on a command's target for its whole life, and
the clean-up of what a killed writer left beside it.

    from mini_encdec.storage.lock import hold

    with hold("runs/M-M", what="--out"):
        ...  # nobody else writes runs/M-M until the block ends

The lock is the file `.<name>.lock` beside the target (created with any missing parent
directories, removed with them at the end), locked with `flock`. The kernel releases it
when its process ends, however it ends, so a lock left by a killed process is simply taken
over (with one line saying so). A second writer, in this or any other process that uses
this module, is refused at once with one `LockedError` line naming the holder's pid; it
waits for nothing and touches nothing. Inside one process the lock is re-entrant, so a
command can take it early and the code that writes can take it again.

When it takes a lock, `hold` also looks beside the target for what a writer killed before
it left behind (see safe_output's naming): unfinished temporary copies `.<name>.tmp-<pid>-*`
of a process no longer running are removed, and an interrupted `--overwrite` swap (the old
content at `.<name>.old-<pid>-*`, the target gone) is put back; each with one line on
stderr. A temporary run directory that holds a started training run (`run_config.json`)
is kept and reported instead: it can be resumed.

Locks are advisory: programs that do not use this module are not stopped. On a system
without `fcntl` (Windows) the lock is an exclusive-create file with the holder's pid; a
lock file whose process is no longer running is taken over in the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..usage import UsageError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

RUN_MARKER = "run_config.json"  # a directory holding it is a resumable training run

_HELD: dict = {}  # lock path -> [fd, depth]: the locks this process holds


class OutputError(UsageError):
    """An output path that cannot be written without losing something, or at all."""


class LockedError(OutputError):
    """Another process is writing the target."""


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (or is not ours to signal)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def make_parents(path: Path, shown: str) -> list:
    """Create the missing parents of `path`; return those created, deepest last. A
    refusal of the file system is one OutputError line starting with `shown`."""
    missing = [p for p in reversed(path.parents) if not os.path.lexists(p)]
    created = []
    try:
        for p in missing:
            try:
                os.mkdir(p)
            except FileExistsError:  # another process made it between our look and now
                continue
            created.append(p)
    except OSError as e:
        remove_empty(created)
        raise OutputError(f"{shown}: cannot create directory {e.filename or p} "
                          f"({e.strerror})") from None
    return created


def remove_empty(dirs: list) -> None:
    """Remove directories this process created (deepest first), if they are still empty."""
    for p in reversed(dirs):
        try:
            os.rmdir(p)
        except OSError:
            pass


def remove(path: Path) -> None:
    """Delete a file, a symlink or a directory tree; what is already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.unlink(path)
        except OSError:
            pass


def _acquire(lock: Path, shown: str) -> tuple:
    """(fd, pid of a dead previous holder or 0) once `lock` is ours; LockedError if taken."""
    while True:
        if fcntl is None:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_pid(lock)
                if pid_alive(holder):
                    raise LockedError(_busy(shown, holder)) from None
                os.unlink(lock)  # a dead holder's
                continue
            return fd, 0
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(lock)
            os.close(fd)
            raise LockedError(_busy(shown, holder)) from None
        try:  # the holder before us may have removed the file between our open and lock
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            previous = _read_pid(lock)
            return fd, previous if previous and previous != os.getpid() else 0
        os.close(fd)


def _busy(shown: str, holder: int) -> str:
    who = f"pid {holder}" if holder else "another process"
    return (f"{shown}: is being written by another process ({who}); wait for it to finish "
            f"or choose another path")


@contextmanager
def hold(target, what: str = "--out", keep=None) -> Iterator[Path]:
    """Hold the exclusive lock of `target` for the block (see the module docstring); yields
    the target as an absolute Path. keep(path) -> True spares a dead writer's temporary
    directory from the clean-up (the caller continues it)."""
    path = Path(os.path.abspath(os.path.expanduser(str(target))))
    lock = lock_path(path)
    key = str(lock)
    if key in _HELD:  # re-entrant inside this process
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    shown = f"{what} {target}"
    created = make_parents(path, shown)
    try:
        fd, dead = _acquire(lock, shown)
    except LockedError:
        remove_empty(created)
        raise
    except OSError as e:
        remove_empty(created)
        raise OutputError(f"{shown}: cannot create a file in {path.parent} "
                         f"({e.strerror})") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        if dead and not pid_alive(dead):
            print(f"{shown}: took over the lock of process {dead}, which is no longer "
                  f"running", file=sys.stderr)
        _HELD[key] = [fd, 1]
        recover(path, shown, keep)
        yield path
    finally:
        _HELD.pop(key, None)
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)
        remove_empty(created)


def leftovers(path: Path) -> list:
    """[(kind, pid, Path)] of the hidden `.<name>.tmp-<pid>-*` and `.<name>.old-<pid>-*`
    entries beside `path` whose process is no longer running."""
    pattern = re.compile(r"^\." + re.escape(path.name) + r"\.(tmp|old)-(\d+)-[0-9a-f]+$")
    found = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = pattern.match(p.name)
        if m and not pid_alive(int(m.group(2))):
            found.append((m.group(1), int(m.group(2)), p))
    return sorted(found, key=lambda f: f[2].name)


def recover(path: Path, shown: str, keep=None) -> None:
    """Undo what killed writers of `path` left (one line each on stderr); temporary
    directories for which keep(p) is true are left for the caller."""
    for kind, pid, p in leftovers(path):
        if kind == "tmp" and keep is not None and keep(p):
            continue
        if kind == "old" and not os.path.lexists(path):
            os.rename(p, path)
            print(f"{shown}: restored its previous content from {p.name} (a replacement "
                  f"by process {pid} was interrupted)", file=sys.stderr)
        elif kind == "tmp" and (p / RUN_MARKER).is_file():
            print(f"{shown}: {p} holds a training run that process {pid} started and did "
                  f"not finish; resume it with --resume --run-dir {p}, or delete it",
                  file=sys.stderr)
        else:
            what = ("unfinished output" if kind == "tmp"
                    else "previous content, already replaced,")
            remove(p)
            print(f"{shown}: removed the {what} left by process {pid} ({p.name})",
                  file=sys.stderr)
