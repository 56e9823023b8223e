"""safe_output: outputs are written beside the target and renamed into place; nothing the
call did not create is ever removed or overwritten without overwrite=True."""

import os
from pathlib import Path

import pytest

from mini_encdec.storage.safe_output import (OutputError, check_output, new_output_dir,
                                     new_output_file, run_directory)
from mini_encdec.usage import UsageError, did_you_mean


def tree(root: Path) -> dict:
    """{relative path: file content or "/"} of everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "/" if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """runs/A (a source with a file), runs/B (another run), a file, an empty directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "A").mkdir(parents=True)
    (tmp_path / "runs" / "A" / "model.safetensors").write_bytes(b"A")
    (tmp_path / "runs" / "B").mkdir()
    (tmp_path / "runs" / "B" / "model.safetensors").write_bytes(b"B")
    (tmp_path / "file.txt").write_text("f")
    (tmp_path / "empty").mkdir()
    return tmp_path


def _write(target, **kw):
    with new_output_dir(target, **kw) as tmp:
        assert tmp.parent == Path(os.path.abspath(target)).parent and not any(tmp.iterdir())
        (tmp / "config.json").write_text("{}")


@pytest.mark.parametrize("target,sources,message", [
    ("runs", {"--from": "runs/A"}, "contains the --from source"),    # would wipe all of runs/
    ("runs/A", {"--from": "runs/A"}, "is the --from source"),
    ("runs/A/sub", {"--from": "runs/A"}, "is inside the --from source"),
    ("runs/B", None, "already exists and is not empty (1 entry)"),
    ("file.txt", None, "is a file"),
    ("file.txt/x", None, "file.txt is a file, not a directory"),
    ("/etc/passwd/x", None, "/etc/passwd is a file, not a directory"),
    ("", None, "expected a path"),
    ("/", None, "is the file system root"),
])
def test_refusals_touch_nothing(runs, target, sources, message):
    before = tree(runs)
    with pytest.raises(OutputError, match="^--out .*" + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        _write(target, sources=sources)
    assert tree(runs) == before
    assert issubclass(OutputError, UsageError) and issubclass(OutputError, ValueError)


def test_unwritable_place_is_one_error_and_leaves_no_parents(runs):
    with pytest.raises(OutputError, match="cannot create"):
        _write("/proc/x")
    with pytest.raises(OutputError, match="cannot create"):
        _write("/proc/x/y/z")


def test_new_absent_and_empty_targets(runs):
    _write("new/deep/C")
    assert tree(runs / "new") == {"deep": "/", "deep/C": "/", "deep/C/config.json": b"{}"}
    _write("empty")
    assert tree(runs / "empty") == {"config.json": b"{}"}


def test_overwrite_replaces_only_after_success(runs):
    with pytest.raises(RuntimeError):
        with new_output_dir("runs/B", overwrite=True) as tmp:
            (tmp / "half").write_text("written")
            raise RuntimeError("disk full")
    assert tree(runs / "runs") == {"A": "/", "A/model.safetensors": b"A", "B": "/",
                                   "B/model.safetensors": b"B"}   # no temporary left
    _write("runs/B", overwrite=True)
    assert tree(runs / "runs" / "B") == {"config.json": b"{}"}
    _write("runs/A", overwrite=True, sources={"--from": "runs/A"})  # explicitly asked for
    assert tree(runs / "runs" / "A") == {"config.json": b"{}"}
    assert sorted(os.listdir(runs / "runs")) == ["A", "B"]


def test_failure_removes_only_what_the_call_created(runs):
    with pytest.raises(KeyboardInterrupt):
        with new_output_dir("x/y/z") as tmp:
            (tmp / "a").write_text("1")
            raise KeyboardInterrupt
    assert not (runs / "x").exists()


def test_a_symlinked_source_is_recognised(runs):
    os.symlink(runs / "runs" / "A", runs / "link")
    with pytest.raises(OutputError, match="is the --from source"):
        _write("runs/A", sources={"--from": "link"})
    with pytest.raises(OutputError, match="is inside the source"):
        _write("link/new", sources=["runs/A"])


def test_new_output_file(runs):
    with new_output_file("out/tok.model") as tmp:
        tmp.write_bytes(b"model")
    assert (runs / "out" / "tok.model").read_bytes() == b"model"
    assert os.listdir(runs / "out") == ["tok.model"]
    with pytest.raises(OutputError, match="is an existing file"):
        with new_output_file("out/tok.model") as tmp:
            tmp.write_bytes(b"other")
    with pytest.raises(OutputError, match="is a directory"):
        with new_output_file("empty"):
            pass
    with pytest.raises(ValueError):
        with new_output_file("out/tok.model", overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise ValueError("bad model")
    assert os.listdir(runs / "out") == ["tok.model"]
    assert (runs / "out" / "tok.model").read_bytes() == b"model"
    with new_output_file("out/tok.model", overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert (runs / "out" / "tok.model").read_bytes() == b"new"


def test_check_output_creates_nothing(runs):
    before = tree(runs)
    assert check_output("a/b/c") == runs / "a" / "b" / "c"
    assert tree(runs) == before


# --- training run directories --------------------------------------------------------------------

def test_run_directory_fresh_failure_before_start_removes_it(runs):
    with pytest.raises(RuntimeError):
        with run_directory("runs/new/R") as rd:
            assert rd.path == runs / "runs" / "new" / "R" and rd.path.is_dir()
            raise RuntimeError("bad model config")
    assert sorted(os.listdir(runs / "runs")) == ["A", "B"]


def test_run_directory_after_start_is_kept_for_resume(runs):
    with pytest.raises(KeyboardInterrupt):
        with run_directory("runs/R") as rd:
            rd.started()
            (rd.path / "run_config.json").write_text("{}")
            raise KeyboardInterrupt
    assert tree(runs / "runs" / "R") == {"run_config.json": b"{}"}
    # resuming writes in place and never removes anything
    with pytest.raises(RuntimeError):
        with run_directory("runs/R", resume=True) as rd:
            assert rd.path == runs / "runs" / "R"
            raise RuntimeError
    assert tree(runs / "runs" / "R") == {"run_config.json": b"{}"}


def test_run_directory_empty_existing_directory_is_used_and_cleaned(runs):
    with pytest.raises(RuntimeError):
        with run_directory("empty") as rd:
            assert rd.path == runs / "empty"
            (rd.path / "x").write_text("1")
            raise RuntimeError
    assert (runs / "empty").is_dir() and not any((runs / "empty").iterdir())


def test_run_directory_overwrite_trains_beside_and_swaps_at_the_end(runs, capsys):
    with pytest.raises(KeyboardInterrupt):
        with run_directory("runs/B", overwrite=True) as rd:
            assert rd.path != runs / "runs" / "B" and rd.path.parent == runs / "runs"
            rd.started()
            (rd.path / "run_config.json").write_text("new")
            raise KeyboardInterrupt
    err = capsys.readouterr().err
    kept = [p for p in os.listdir(runs / "runs") if p.startswith(".B.tmp-")]
    assert len(kept) == 1 and "resume it with --resume --run-dir" in err
    assert tree(runs / "runs" / "B") == {"model.safetensors": b"B"}  # unchanged
    with run_directory("runs/B", overwrite=True) as rd:
        rd.started()
        (rd.path / "run_config.json").write_text("new")
    assert tree(runs / "runs" / "B") == {"run_config.json": b"new"}


def test_run_directory_refusals(runs):
    with pytest.raises(OutputError, match="--run-dir runs/B: already exists and is not empty"):
        with run_directory("runs/B"):
            pass
    with pytest.raises(OutputError, match="expected an existing run directory"):
        with run_directory("file.txt", resume=True):
            pass


def test_did_you_mean():
    assert did_you_mean("stepz", ["steps", "seed", "lr"]) == " (did you mean 'steps'?)"
    assert did_you_mean("Tiny", ["tiny", "small"]) == " (did you mean 'tiny'?)"
    assert did_you_mean("zzz", ["steps"]) == ""
    assert did_you_mean("stpes", ["steps"], prefix="train.") == " (did you mean 'train.steps'?)"
