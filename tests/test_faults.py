"""Fault injection, beside the bad-argument suite: concurrent writers, a resume during a live
run, kills at random moments, a full disk, damaged run state, moved inputs, blank and
multi-line prompts, and the memory estimate against a measured peak. Each case checks the
exit status, that the complaint is one line, and the sha256 of everything that must not
change."""

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mini_encdec.cli.common import training_memory
from mini_encdec.cli.overrides import build_model_config
from mini_encdec.storage import checkpoint as ckpt
from mini_encdec.storage.lock import hold, lock_path
from mini_encdec.storage.safe_output import new_output_dir
from mini_encdec.training.train import DAMAGED_FILE, METRICS_FILE

from .conftest import cli_env, run_cli

SMALL = ["batch_size=2", "encoder_length=16", "decoder_length=16", "eval_batches=1",
         "checkpoint_every=2", "eval_every=2"]
M = [sys.executable, "-m", "mini_encdec"]


run = run_cli
env = cli_env


def digest(root: Path) -> dict:
    """{relative path: sha256} of every file under root (or of root itself)."""
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()
            and not (p.name.startswith(".") and p.name.endswith(".lock"))}  # a killed holder's


def error_lines(err: str) -> list:
    return [line for line in err.splitlines() if "error:" in line]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two 2-step decoder runs A and B (different seeds)."""
    root = tmp_path_factory.mktemp("faults")
    for name, seed in (("A", 0), ("B", 1)):
        assert run("pretrain", "--arch", "decoder", "--run-dir", root / name, "--quiet",
                   "--set", "steps=2", f"seed={seed}", *SMALL) == 0
    return root


class Holder:
    """Another process holding the lock of `target` until stopped."""

    def __init__(self, target: Path):
        code = ("import sys, time\nfrom mini_encdec.storage.lock import hold\n"
                f"with hold({str(target)!r}):\n    print('held', flush=True)\n"
                "    time.sleep(120)\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env(),
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


# --- 1. one writer per output ----------------------------------------------------------------

@pytest.mark.parametrize("command", ["adapt", "tokenizer", "pretrain", "demo"])
def test_a_second_writer_is_refused_naming_the_holder(command, models, tmp_path, capsys):
    target = tmp_path / "X"
    target.mkdir()
    (target / "keep.txt").write_text("the first writer's")
    before = digest(target)
    argv = {"adapt": ["adapt", "--from", models / "A", "--out", target, "--overwrite"],
            "tokenizer": ["tokenizer", "train", "--out", target / "t.model",
                          "--vocab-size", "600"],
            "pretrain": ["pretrain", "--arch", "decoder", "--run-dir", target, "--overwrite",
                         "--set", "steps=1", *SMALL],
            "demo": ["demo", "--quick", "--out", target, "--overwrite"]}[command]
    locked = target / "t.model" if command == "tokenizer" else target
    holder = Holder(locked)
    try:
        capsys.readouterr()
        assert run(*argv) == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and f"pid {holder.proc.pid}" in lines[0], lines
        assert "being written by another process" in lines[0]
    finally:
        holder.stop()
    assert digest(target) == before


def test_resume_while_the_run_is_going_is_refused(models, tmp_path, capsys):
    holder = Holder(models / "A")
    before = digest(models / "A")
    try:
        capsys.readouterr()
        assert run("pretrain", "--resume", "--run-dir", models / "A", "--set", "steps=4",
                   "--quiet") == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and f"pid {holder.proc.pid}" in lines[0]
    finally:
        holder.stop()
    assert digest(models / "A") == before


def test_two_concurrent_adapts_leave_one_complete_model(models, tmp_path):
    out = tmp_path / "X"
    procs = [subprocess.Popen([*M, "adapt", "--from", models / src, "--out", out, "--quiet"],
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for src in ("A", "B")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert len(error_lines(loser)) == 1
    assert "being written" in loser or "already exists" in loser
    ckpt.load_model(out)  # complete and loadable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X"]  # no lock, no temporary


def test_a_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    target = tmp_path / "X"
    lock_path(target).write_text(f"{dead_pid()}\n")
    with new_output_dir(target) as tmp:
        (tmp / "f").write_text("x")
    assert "took over the lock" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X"]


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across(tmp_path):
    target = tmp_path / "X"
    with hold(target), hold(target):
        code = (f"from mini_encdec.storage.lock import hold\nwith hold({str(target)!r}):\n"
                "    pass\n")
        done = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                              text=True)
        assert done.returncode != 0 and f"pid {os.getpid()}" in done.stderr
    assert not lock_path(target).exists()


# --- 2. kills ----------------------------------------------------------------------------------

def test_adapt_killed_at_random_moments_then_rerun_equals_an_uninterrupted_run(
        models, tmp_path, capsys):
    reference = tmp_path / "ref"
    assert run("adapt", "--from", models / "A", "--out", reference, "--quiet") == 0
    rng = random.Random(20)
    for trial in range(3):
        out = tmp_path / f"X{trial}"
        p = subprocess.Popen([*M, "adapt", "--from", models / "A", "--out", out, "--quiet"],
                             env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 3.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
        capsys.readouterr()
        assert run("adapt", "--from", models / "A", "--out", out, "--quiet",
                   *(["--overwrite"] if out.exists() else [])) == 0
        assert digest(out) == digest(reference)
        left = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".X{trial}")]
        assert left == [], left


def test_an_interrupted_overwrite_swap_is_restored(tmp_path, capsys):
    target = tmp_path / "X"
    old = tmp_path / f".X.old-{dead_pid()}-abc123"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"the old model")
    before = digest(old)
    with pytest.raises(Exception, match="already exists"):
        with new_output_dir(target):
            pass
    assert "restored its previous content" in capsys.readouterr().err
    assert digest(target) == before and not old.exists()


def test_a_killed_writers_temporary_is_removed_with_one_line(tmp_path, capsys):
    tmp = tmp_path / f".X.tmp-{dead_pid()}-abc123"
    tmp.mkdir()
    (tmp / "half").write_bytes(b"x" * 1000)
    with new_output_dir(tmp_path / "X") as out:
        (out / "f").write_text("new")
    err = capsys.readouterr().err
    assert "removed the unfinished output" in err and not tmp.exists()


def test_a_killed_demo_is_continued_from_its_finished_stages(tmp_path, capsys):
    left = tmp_path / f".D.tmp-{dead_pid()}-abc123"
    left.mkdir()
    (left / "demo_args.json").write_text('{"seed": 0}')
    (left / "results").mkdir()
    (left / "results" / "unit.json").write_text("{}")
    other = tmp_path / f".D.tmp-{dead_pid()}-def456"  # other settings: removed
    other.mkdir()
    (other / "demo_args.json").write_text('{"seed": 1}')

    def same(p):
        return json.loads((p / "demo_args.json").read_text()) == {"seed": 0}
    with new_output_dir(tmp_path / "D", resumable=same) as out:
        assert (out / "results" / "unit.json").is_file()
    err = capsys.readouterr().err
    assert "continuing the unfinished run" in err and "removed the unfinished" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D"]


# --- 3. run history and run state ---------------------------------------------------------------

@pytest.fixture
def run4(tmp_path):
    d = tmp_path / "R"
    assert run("pretrain", "--arch", "decoder", "--run-dir", d, "--quiet",
               "--set", "steps=4", *SMALL) == 0
    return d


def test_a_damaged_metrics_line_is_kept_aside_not_everything_after_it(run4, capsys):
    lines = (run4 / METRICS_FILE).read_text().splitlines()
    n = len(lines)
    lines[1] = "[1, 2]"
    lines.insert(3, '{"step": 2, "loss": 4.0')  # a line cut short
    (run4 / METRICS_FILE).write_text("\n".join(lines) + "\n")
    assert run("pretrain", "--resume", "--run-dir", run4, "--set", "steps=6") == 0
    kept = [json.loads(x) for x in (run4 / METRICS_FILE).read_text().splitlines()]
    assert len(kept) >= n - 1 and max(r["step"] for r in kept) == 6
    damaged = [json.loads(x) for x in (run4 / DAMAGED_FILE).read_text().splitlines()]
    assert [d["line"] for d in damaged] == [2, 4] and damaged[0]["text"] == "[1, 2]"
    assert "damaged line(s)" in capsys.readouterr().err


@pytest.mark.parametrize("edit,field", [
    (lambda c: c.update(data=None), "'data' must be a JSON object"),
    (lambda c: c["optim"].update(lr=0.5), "'optim.lr' differs from the checkpoint"),
    (lambda c: c["data"].update(encoder_length=8), "'data.encoder_length' differs"),
    (lambda c: c.update(objective="prefix_lm"), "'objective' differs"),
])
def test_an_edited_run_config_is_refused_naming_the_field(run4, capsys, edit, field):
    cfg = json.loads((run4 / "run_config.json").read_text())
    edit(cfg)
    (run4 / "run_config.json").write_text(json.dumps(cfg))
    before = digest(run4)
    capsys.readouterr()
    assert run("pretrain", "--resume", "--run-dir", run4, "--set", "steps=6") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and field in lines[0], lines
    assert digest(run4) == before


def test_a_changed_train_value_says_when_it_takes_effect(run4, capsys):
    assert run("pretrain", "--resume", "--run-dir", run4, "--set", "steps=6") == 0
    assert "train.steps: 4 -> 6, in effect from the resumed step on" in capsys.readouterr().err


def test_resume_works_from_another_directory_and_after_init_moved(models, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(models / "A", tmp_path / "A")  # a relative --init
    assert run("pretrain", "--init", "A", "--run-dir", "R", "--quiet",
               "--set", "steps=2", *SMALL) == 0
    cfg = json.loads((tmp_path / "R" / "run_config.json").read_text())
    assert os.path.isabs(cfg["init"])
    (tmp_path / "A").unlink()  # the --init is gone: the checkpoint has the weights
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run("pretrain", "--resume", "--run-dir", tmp_path / "R", "--quiet",
               "--set", "steps=4") == 0
    assert ckpt.load_checkpoint(tmp_path / "R").step == 4


# --- 4. every prompt answered ------------------------------------------------------------------

def _generate(model_dir, stdin: str, *extra):
    return subprocess.run([*M, "generate", "--checkpoint", model_dir, "--max-new-tokens", "4",
                           *extra], input=stdin, env=env(), capture_output=True, text=True,
                          timeout=300)


def test_blank_prompts_get_an_error_and_the_rest_still_run(models):
    done = _generate(models / "A", "to be\n\nor not\n")
    assert done.returncode == 2
    assert len(done.stdout.splitlines()) == 3 and done.stdout.splitlines()[1] == ""
    assert "stdin line 2: empty prompt" in done.stderr
    assert "1 of 3 prompts could not be answered" in done.stderr


def test_jsonl_carries_newlines_both_ways(models):
    prompts = ["to be\nor not", "", "O Romeo"]
    done = _generate(models / "A", "".join(json.dumps({"prompt": p}) + "\n" for p in prompts),
                     "--jsonl")
    out = [json.loads(x) for x in done.stdout.splitlines()]
    assert [o["prompt"] for o in out] == prompts
    assert "reply" in out[0] and "error" in out[1] and "reply" in out[2]
    assert done.returncode == 2


# --- 5. memory checked before it is spent -------------------------------------------------------

MEASURE = r"""
import json, sys, numpy as np
from mini_encdec.backend import use_backend
from mini_encdec.cli.overrides import build_model_config
from mini_encdec.models import build_model
arch, B, S, T, backend = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
model = build_model(build_model_config(arch, "tiny", {}), seed=0)
rng = np.random.default_rng(0)
if arch == "decoder":
    ids = rng.integers(3, 1000, (B, S + T + 1))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:].copy()}
else:
    batch = {"input_ids": rng.integers(3, 1000, (B, S)),
             "decoder_input_ids": rng.integers(3, 1000, (B, T)),
             "labels": rng.integers(3, 1000, (B, T))}
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
with use_backend(backend):
    base = status("VmRSS:")
    model.loss_and_grads(batch)
    print(json.dumps(status("VmHWM:") - base))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("arch,B,S,T", [("decoder", 8, 128, 128), ("decoder", 4, 256, 256),
                                        ("encdec", 16, 128, 128)])
def test_memory_estimate_is_within_1_5x_of_the_measured_peak(arch, B, S, T):
    measured = int(subprocess.run([sys.executable, "-c", MEASURE, arch, str(B), str(S),
                                   str(T), "numpy"], env=env(), capture_output=True,
                                  text=True, check=True, timeout=300).stdout)
    config = build_model_config(arch, "tiny", {})
    estimate = training_memory(config, arch, B, S, T, "numpy")
    assert measured / 1.5 <= estimate <= measured * 1.5, (estimate, measured)


def test_an_impossible_batch_is_refused_before_anything_is_created(tmp_path, capsys):
    assert run("pretrain", "--arch", "decoder", "--run-dir", tmp_path / "R",
               "--set", "batch_size=100000") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "GiB" in lines[0]
    assert list(tmp_path.iterdir()) == []


# --- 6. full disk and bad files ----------------------------------------------------------------

def test_a_full_disk_names_the_path_and_the_space_and_leaves_no_partial_checkpoint(
        models, tmp_path, capsys, monkeypatch):
    import shutil
    work = tmp_path / "R"
    shutil.copytree(models / "A", work)
    real = ckpt._write_synced

    def full(path, data):
        if path.name == ckpt.OPTIMIZER_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)
    monkeypatch.setattr(ckpt, "_write_synced", full)
    before = digest(work / "checkpoints")
    assert run("pretrain", "--resume", "--run-dir", work, "--quiet", "--set", "steps=4") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "No space left on device" in lines[0] and "MB" in lines[0]
    assert str(work / "checkpoints") in lines[0]
    assert digest(work / "checkpoints") == before  # no partial step directory
    monkeypatch.setattr(ckpt, "_write_synced", real)
    assert run("pretrain", "--resume", "--run-dir", work, "--quiet", "--set", "steps=4") == 0


def test_deep_json_and_non_finite_weights_are_one_line(models, tmp_path, capsys):
    deep = tmp_path / "deep"
    model = ckpt.load_model(models / "A")
    ckpt.save_model(deep, model.config, model.params)
    (deep / "config.json").write_text("[" * 100000 + "]" * 100000)
    nan = tmp_path / "nan"
    params = dict(model.params)
    name = next(iter(params))
    params[name] = params[name].copy()
    params[name].flat[0] = np.nan
    ckpt.save_model(nan, model.config, params)
    for path, message in ((deep, "nested too deeply"), (nan, "non-finite")):
        capsys.readouterr()
        assert run("generate", "--checkpoint", path, "--prompt", "to be") == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and message in lines[0], lines


def test_a_tokenizer_of_another_size_is_refused_by_every_command(models, tmp_path, capsys):
    tok = tmp_path / "small.model"
    assert run("tokenizer", "train", "--out", tok, "--vocab-size", "600") == 0
    for argv in (["generate", "--checkpoint", models / "A", "--prompt", "to be",
                  "--tokenizer", tok],
                 ["evaluate", "--checkpoint", models / "A", "--tokenizer", tok],
                 ["pretrain", "--init", models / "A", "--tokenizer", tok, "--run-dir",
                  tmp_path / "R", "--set", "steps=1", *SMALL]):
        capsys.readouterr()
        assert run(*argv) == 2, argv
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and "vocabulary" in lines[0], lines
    assert not (tmp_path / "R").exists()


def test_a_symlink_is_called_a_symlink(tmp_path, capsys):
    os.symlink(tmp_path / "nowhere", tmp_path / "link")
    assert run("tokenizer", "train", "--out", tmp_path / "link", "--vocab-size", "600") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "symbolic link" in lines[0] and "--out" in lines[0]


# --- command-line gaps --------------------------------------------------------------------------

def test_an_unfinished_run_says_which_checkpoint_it_read(models, tmp_path, capsys):
    import shutil
    work = tmp_path / "R"
    shutil.copytree(models / "A", work)
    cfg = json.loads((work / "run_config.json").read_text())
    cfg["train"]["steps"] = 10  # as if still training
    (work / "run_config.json").write_text(json.dumps(cfg))
    assert run("generate", "--checkpoint", work, "--prompt", "to be",
               "--max-new-tokens", "2") == 0
    assert "the run is at step 2 of 10" in capsys.readouterr().err


def test_ctrl_c_says_how_to_continue(tmp_path):
    # the child gets Ctrl-C's default handling even where this suite runs in the background
    # of a non-interactive shell, which starts its children with SIGINT ignored
    p = subprocess.Popen([*M, "pretrain", "--arch", "decoder", "--run-dir", tmp_path / "R",
                          "--set", "steps=100000", *SMALL], env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 900  # a loaded machine starts Python slowly
    while not (tmp_path / "R" / "checkpoints").is_dir() and time.time() < deadline \
            and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=900)
    assert p.returncode == 130
    assert f"continue with: python -m mini_encdec pretrain --resume --run-dir {tmp_path / 'R'}" \
        in err


@pytest.mark.parametrize("argv,fragment", [
    (["pretrain", "--arch", "decoder", "--preset", "9b-2b"], "add --arch encdec"),
    (["pretrain", "--set", "lr=-1"], "--set optim.lr=-1.0: expected a positive number"),
])
def test_command_line_hints(argv, fragment, tmp_path, capsys):
    assert run(*argv, "--run-dir", tmp_path / "R") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and fragment in lines[0], lines
