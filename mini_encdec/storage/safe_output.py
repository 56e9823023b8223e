"""Writing a command's output without ever losing anything the command did not create.

Every command that writes (adapt, pretrain, finetune, tokenizer train, demo, study, and
interop.save_hf) goes through this module. Its promise: nothing is deleted or
overwritten that this run did not create, unless the user asked with `--overwrite`
(`overwrite=True`), and even then the old content is only replaced once the new one is
complete.

    from mini_encdec.storage.safe_output import new_output_dir

    with new_output_dir("runs/M-M", sources={"--from": "runs/M"}, what="--out") as tmp:
        save_files_into(tmp)           # a fresh, empty directory beside runs/M-M
    # here runs/M-M holds exactly those files

The rules, checked up front (`check_output`), before anything is created; each broken
rule is one OutputError line (a UsageError, so the command line prints it and exits 2):

  - the nearest existing ancestor of the target must be a directory ("/etc/passwd/x" is
    refused: /etc/passwd is a file);
  - an existing target must be an empty directory (new_output_dir) or absent
    (new_output_file), unless overwrite=True;
  - the target must not be a source, lie inside a source, or contain a source (paths
    compared after resolving symlinks), unless overwrite=True.
What the file system itself refuses (/proc/x, a read-only disk, no permission) becomes
one OutputError line when the temporary directory is created, before any real work.

One writer at a time: each context below holds the target's lock (storage/lock.py) for
its block, checks the target again once it has it, and tidies what a killed writer left
beside the target (its temporary copy removed, an interrupted swap restored).

How it writes:

  - a new temporary directory `.<name>.tmp-<pid>-<random>` is created beside the target
    (same file system, so the final rename is atomic), with any missing parents;
  - on success: an absent or empty target is replaced by one rename. An existing target
    (overwrite=True) is renamed aside to `.<name>.old-<pid>-<random>`, the new directory
    renamed into place, and only then the old one deleted;
  - on failure (any exception, Ctrl-C): the temporary directory is deleted, and so are the
    parent directories this call created, if still empty. Nothing else is touched. (A
    process killed with SIGKILL leaves its hidden temporary directory behind, and nothing
    else changed.)

new_output_file is the same for one file (the tokenizer model): it yields a temporary
path beside the target and `os.replace`s it into place on success.

Training run directories (pretrain, finetune) must survive a kill and be resumable in
place (`--resume --run-dir DIR`), so `run_directory` differs in one way: a new run in an
absent or empty directory writes there directly. Until the caller says `started()` (just
before the first training step) a failure removes what it created; after, everything
stays, so the run can be resumed. A new run over a non-empty directory (overwrite=True)
trains in a temporary directory beside it, which replaces the old one when the run
completes (and is kept, under its printed name, if the run fails).
"""

from __future__ import annotations

import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Union

from .lock import OutputError, hold, leftovers, make_parents, remove, remove_empty

PathLike = Union[str, Path]
# {label: path}, or paths and (label, path) pairs; the label names the option in messages
Sources = Union[Mapping[str, Optional[PathLike]], Iterable, None]


# --- the checks ----------------------------------------------------------------------------------

def _labelled(sources: Sources) -> list:
    """[(label, Path)] of the given sources: a mapping {label: path}, or an iterable of
    paths and (label, path) pairs. None entries (an unused option) are dropped."""
    if sources is None:
        return []
    if isinstance(sources, Mapping):
        items = list(sources.items())
    else:
        items = [s if isinstance(s, tuple) else ("", s) for s in sources]
    return [(label, Path(p)) for label, p in items if p is not None and str(p) != ""]


def _inside(child: str, parent: str) -> bool:
    """True if resolved path `child` lies strictly inside resolved path `parent`."""
    return child != parent and child.startswith(parent.rstrip(os.sep) + os.sep)


def shown_path(path) -> str:
    """A path as messages print it: as is, or quoted when it holds a newline or another
    non-printable character (so a message stays one line)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _nearest_existing(path: Path) -> Path:
    """The path itself or its nearest ancestor that exists (lexists: a dangling symlink
    counts)."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path(path.anchor or ".")


def check_output(target: PathLike, *, overwrite: bool = False, sources: Sources = None,
                 what: str = "--out", kind: str = "directory",
                 overwrite_hint: Optional[str] = None) -> Path:
    """Check that `target` may be written (the rules in the module docstring) without
    creating anything; return it as an absolute Path. Raises OutputError, one line that
    starts with `what` (the argument's name, e.g. "--out" or "save_hf: argument 'path'").

    kind: "directory" (an existing empty directory is fine) or "file".
    """
    if kind not in ("directory", "file"):
        raise ValueError(f"check_output: argument 'kind': expected 'directory' or 'file', "
                         f"got {kind!r}")
    hint = overwrite_hint or ("--overwrite" if what.startswith("-") else "overwrite=True")
    text = str(target)
    if text == "" or "\0" in text:
        raise OutputError(f"{what} {text!r}: expected a path")
    path = Path(os.path.abspath(os.path.expanduser(text)))
    shown = f"{what} {shown_path(text)}"
    if path == Path(path.anchor):
        raise OutputError(f"{shown}: is the file system root; choose a new {kind}")
    # every existing ancestor must be a directory we can enter
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputError(f"{shown}: {base} is a file, not a directory; expected a path "
                          f"whose parent directories exist or can be created")
    # sources first (the most useful message): never the target, around it or inside it
    real = os.path.realpath(path)
    for label, src in _labelled(sources):
        s = os.path.realpath(src)
        name = f"{label} source" if label else "source"
        if real == s:
            relation = f"is the {name}; choose another {kind}"
        elif _inside(real, s):
            relation = f"is inside the {name} {shown_path(src)}; choose a {kind} outside it"
        elif _inside(s, real):
            relation = (f"contains the {name} {shown_path(src)}, which would be replaced; "
                        f"choose another {kind}")
        else:
            continue
        if not overwrite:
            raise OutputError(f"{shown}: {relation} (or add {hint} if that is what you want)")
    # what is there now
    if os.path.lexists(path):
        if kind == "file" and path.is_dir() and not path.is_symlink():
            raise OutputError(f"{shown}: is a directory; expected a file path")
        if kind == "directory" and path.is_dir() and not path.is_symlink():
            try:
                entries = sum(1 for _ in path.iterdir())
            except OSError as e:
                raise OutputError(f"{shown}: cannot be read ({e.strerror})") from None
            if entries and not overwrite:
                raise OutputError(f"{shown}: already exists and is not empty ({entries} "
                                  f"{'entry' if entries == 1 else 'entries'}); choose a new directory, or add {hint} to "
                                  f"replace it once the new output is complete")
        elif not overwrite:
            what_is = "a file" if kind == "directory" else "an existing file"
            if path.is_symlink():
                what_is = "a symbolic link"
            raise OutputError(f"{shown}: is {what_is}; choose a new "
                              f"{'directory' if kind == 'directory' else 'path'}, or add "
                              f"{hint} to replace it once the new output is complete")
    return path


# --- creating and placing ------------------------------------------------------------------------

def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (skipped where directories can't be
    opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _beside(path: Path, tag: str) -> Path:
    """A fresh hidden name next to `path`: `.<name>.<tag>-<pid>-<random>`."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{secrets.token_hex(3)}")


def _place(new: Path, target: Path, overwrite: bool = True, shown: str = "") -> None:
    """Put `new` at `target`. An empty directory or nothing at `target`: one rename. Anything
    else is renamed aside first and deleted only after `new` is in place. Without
    `overwrite`, something that appeared at `target` while this process worked (a program
    that does not take the lock) is left alone: `new` is kept beside it, visibly named,
    and OutputError says where."""
    old = None
    if os.path.lexists(target):
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            os.rmdir(target)  # empty: nothing to keep
        elif not overwrite:
            kept = target.with_name(f"{target.name}.new-{os.getpid()}")
            os.rename(new, kept)
            raise OutputError(f"{shown or target}: was created by another program while this "
                              f"one worked; left as it is, the new output is in {kept}")
        else:
            old = _beside(target, "old")
            os.rename(target, old)
    os.rename(new, target)
    fsync_dir(target.parent)
    if old is not None:
        remove(old)


@contextmanager
def new_output_dir(target: PathLike, *, overwrite: bool = False, sources: Sources = None,
                   what: str = "--out", overwrite_hint: Optional[str] = None,
                   resumable=None) -> Iterator[Path]:
    """Check `target` (check_output), yield a new empty temporary directory beside it and,
    when the block completes, move it into place (replacing an existing target only if
    `overwrite`). If the block raises, only the temporary directory (and parents this
    call created) is removed and the exception propagates.

    resumable(p) -> True: a temporary directory that a killed writer of `target` left and
    that this one can continue (the demo's finished stages); the newest such directory is
    yielded (renamed to this process's name) instead of an empty one, with one line."""
    kw = dict(overwrite=overwrite, sources=sources, what=what, kind="directory",
              overwrite_hint=overwrite_hint)
    path = check_output(target, **kw)
    shown = f"{what} {shown_path(target)}"
    with hold(path, what, keep=resumable):
        check_output(target, **kw)  # again: a writer before us may just have finished
        created = make_parents(path, shown)
        tmp = _beside(path, "tmp")
        left = sorted((p for kind, _, p in leftovers(path) if kind == "tmp"
                       and resumable is not None and resumable(p)),
                      key=lambda p: p.stat().st_mtime)
        try:
            if left:
                os.rename(left[-1], tmp)
                print(f"{shown}: continuing the unfinished run left in {left[-1].name} (its "
                      f"finished stages are kept)", file=sys.stderr)
            else:
                os.mkdir(tmp)
        except OSError as e:
            remove_empty(created)
            raise OutputError(f"{shown}: cannot create a directory in {path.parent} "
                              f"({e.strerror})") from None
        try:
            yield tmp
            fsync_dir(tmp)
            _place(tmp, path, overwrite, shown)
        except BaseException:
            remove(tmp)
            remove_empty(created)
            raise


@contextmanager
def new_output_file(target: PathLike, *, overwrite: bool = False, sources: Sources = None,
                    what: str = "--out", overwrite_hint: Optional[str] = None) -> Iterator[Path]:
    """Check `target` as a file path, yield a temporary file path beside it (not yet
    created) and, when the block completes, `os.replace` it into place. If the block raises,
    the temporary file (and parents this call created) is removed."""
    kw = dict(overwrite=overwrite, sources=sources, what=what, kind="file",
              overwrite_hint=overwrite_hint)
    path = check_output(target, **kw)
    shown = f"{what} {shown_path(target)}"
    with hold(path, what):
        check_output(target, **kw)  # again: a writer before us may just have finished
        created = make_parents(path, shown)
        tmp = _beside(path, "tmp")
        try:  # probe now, so an unwritable place fails before the real work
            with open(tmp, "xb"):
                pass
        except OSError as e:
            remove_empty(created)
            raise OutputError(f"{shown}: cannot create a file in {path.parent} "
                              f"({e.strerror})") from None
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if not overwrite and os.path.lexists(path):
                _place(tmp, path, overwrite, shown)  # refuses, keeps ours beside it
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            remove(tmp)
            remove_empty(created)
            raise


# --- training run directories --------------------------------------------------------------------

class RunDirectory:
    """Where a training run writes (`path`), and whether it may still be cleaned up."""

    def __init__(self, target: Path, path: Path, created: list, replaces: bool):
        self.target = target        # the directory the user named
        self.path = path            # where to write: target, or a temporary one beside it
        self.created = created      # directories this process created, to undo on failure
        self.replaces = replaces    # path is temporary and replaces target at the end
        self.is_started = False

    def started(self) -> None:
        """Call just before the first training step: from now on a failure keeps the
        directory (it holds a resumable run)."""
        self.is_started = True


@contextmanager
def run_directory(target: PathLike, *, overwrite: bool = False, resume: bool = False,
                  sources: Sources = None, what: str = "--run-dir") -> Iterator[RunDirectory]:
    """The directory a training run writes to (see the module docstring).

    resume=True: `target` must be an existing directory; it is used as is and nothing in
    it is ever removed here. Otherwise check_output's rules apply; an absent or empty
    target is used directly, a non-empty one (overwrite=True) is replaced at the end by a
    temporary directory beside it.
    """
    shown = f"{what} {shown_path(target)}"
    if resume:
        path = Path(os.path.abspath(os.path.expanduser(str(target))))
        if not path.is_dir():
            raise OutputError(f"{shown}: expected an existing run directory to resume")
        with hold(path, what):
            yield RunDirectory(path, path, [], False)
        return
    path = check_output(target, overwrite=overwrite, sources=sources, what=what,
                        kind="directory")
    with hold(path, what):
        check_output(target, overwrite=overwrite, sources=sources, what=what,
                     kind="directory")
        with _new_run_directory(target, path, overwrite, what, shown) as run:
            yield run


@contextmanager
def _new_run_directory(target, path: Path, overwrite: bool, what: str,
                       shown: str) -> Iterator[RunDirectory]:
    in_place = not os.path.lexists(path) or (
        path.is_dir() and not path.is_symlink() and not any(path.iterdir()))
    created = make_parents(path, shown)
    work = path if in_place else _beside(path, "tmp")
    try:
        if not os.path.lexists(work):
            os.mkdir(work)
            created.append(work)
    except OSError as e:
        remove_empty(created)
        raise OutputError(f"{shown}: cannot create the directory ({e.strerror})") from None
    run = RunDirectory(path, work, created, replaces=not in_place)
    if run.replaces:
        print(f"{what} {target} is not empty (--overwrite): this run writes to {work}, "
              f"which replaces it when the run completes", file=sys.stderr)
    try:
        yield run
    except BaseException:
        if not run.is_started:
            if work != path or work in created:
                remove(work)
            else:  # an empty directory that was already there: remove only what we wrote
                for p in list(work.iterdir()):
                    remove(p)
            remove_empty([p for p in created if p != work])
        elif run.replaces:
            print(f"the interrupted run is kept in {work} (resume it with --resume "
                  f"--run-dir {work}); {target} is unchanged", file=sys.stderr)
        raise
    if run.replaces:
        _place(work, path, overwrite, shown)
