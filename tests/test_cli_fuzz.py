"""Command-line fuzz test: every command against a battery of bad inputs.

Each case must end with exit status 2, exactly one line on stderr (`<prog>: error: ...`
naming the argument and what was expected), no traceback, and nothing created, changed or
removed anywhere in the sandbox (a snapshot of the whole tree, with sizes, mtimes and
hashes, is compared before and after; the commands run with the sandbox as the current
directory, so default run directories would land in it too).

Most cases run in-process through `mini_encdec.cli.main` (fast); a few run as real
subprocesses, with a real stdin and a C locale. The sandbox is built once per module:
a 2-step decoder-only run on a very small model, the encoder-decoder adapted from it, a
copy of the run whose latest checkpoint is truncated, a run killed before its first
checkpoint, and assorted bad files.

`pytest tests/test_cli_fuzz.py -s` prints every case's message.
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mini_encdec.storage import checkpoint as ckpt
from mini_encdec.backend import use_backend
from mini_encdec.cli import main

REPO = Path(__file__).resolve().parent.parent

# a very small model (the shipped tokenizer still needs an 8192-id vocabulary)
SMALL_MODEL = ["hidden_size=16", "intermediate_size=32", "num_attention_heads=2",
               "num_key_value_heads=1", "head_dim=8"]
TINY_BUDGET = ["steps=1", "batch_size=2", "encoder_length=8", "decoder_length=8",
               "eval_batches=1"]


def run(argv, stdin: bytes = None):
    """main(argv) in-process on the numpy backend; the exit status (SystemExit included).
    stdin: bytes given to the command as its standard input."""
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8",
                                     errors="surrogateescape")
    try:
        with use_backend("numpy"):
            return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code
    finally:
        sys.stdin = saved


# --- the sandbox ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        runs = root / "runs"
        dec = runs / "dec"
        assert run(["pretrain", "--arch", "decoder", "--run-dir", dec, "--quiet", "--set",
                    *SMALL_MODEL, *TINY_BUDGET, "steps=2", "checkpoint_every=1",
                    "plot=false"]) == 0
        (runs / "other").mkdir()
        (runs / "other" / "notes.txt").write_text("another run's notes\n")
        ed = root / "ed"
        assert run(["adapt", "--from", dec, "--out", ed, "--quiet"]) == 0
        # the same run with its latest checkpoint cut short
        corrupt = root / "corrupt_run"
        shutil.copytree(dec, corrupt)
        weights = ckpt.latest_checkpoint(corrupt / "checkpoints") / ckpt.MODEL_FILE
        weights.write_bytes(weights.read_bytes()[:500])
        # a run killed before its first checkpoint: a config and a metrics line
        killed = root / "killed_run"
        killed.mkdir()
        shutil.copy(dec / "run_config.json", killed / "run_config.json")
        (killed / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')
        # a run directory whose run_config.json is damaged
        badcfg = root / "badcfg_run"
        shutil.copytree(dec, badcfg)
        (badcfg / "run_config.json").write_text('{"command": "pretrain", "train": {')
        # a model directory whose config.json is not JSON
        garbage = root / "garbage_model"
        garbage.mkdir()
        (garbage / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n")
        (garbage / "model.safetensors").write_bytes(b"\0" * 64)
        files = root / "files"
        files.mkdir()
        (files / "plain.txt").write_text("To be, or not to be, that is the question.\n" * 50)
        (files / "binary.bin").write_bytes(bytes(range(256)) * 8)
        (files / "latin1.txt").write_bytes("Café, naïve, señor\n".encode("latin-1") * 20)
        (root / "full").mkdir()
        (root / "full" / "keep.txt").write_text("keep me\n")
        (root / "empty").mkdir()
        yield root
    finally:
        os.chdir(cwd)


def snapshot(root: Path) -> dict:
    """Every directory and file under root: files by (size, mtime, sha256)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        out[str(d.relative_to(root)) + "/"] = "dir"
        for name in filenames:
            p = d / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns,
                                             hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def diff(before: dict, after: dict) -> list:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


# --- the battery ----------------------------------------------------------------------------------
# (id, argv, a fragment the message must contain, stdin bytes or None). Paths in argv:
# {root} the sandbox, {dec} the decoder-only run, {ed} the adapted encoder-decoder.

P = ["--quiet", "--set", *TINY_BUDGET]  # a tiny budget, in case a case ever got to train
CASES = [
    # paths: run directories
    ("run-dir-in-proc", ["pretrain", "--run-dir", "/proc/x", *P], "--run-dir /proc/x"),
    ("run-dir-under-a-file", ["pretrain", "--run-dir", "/etc/passwd/x", *P],
     "/etc/passwd is a file, not a directory"),
    ("run-dir-is-a-file", ["finetune", "--task", "reverse", "--run-dir", "{root}/files/plain.txt",
                           *P], "is a file"),
    ("run-dir-empty-string", ["pretrain", "--run-dir", "", *P], "--run-dir '': expected"),
    ("run-dir-not-empty", ["pretrain", "--run-dir", "{root}/full", *P],
     "already exists and is not empty"),
    ("run-dir-holds-a-run", ["pretrain", "--arch", "decoder", "--run-dir", "{dec}", *P],
     "already holds checkpoints"),
    ("run-dir-interrupted", ["pretrain", "--run-dir", "{root}/killed_run", *P],
     "already holds a run: add --resume"),
    ("run-dir-inside-init", ["pretrain", "--init", "{dec}", "--run-dir", "{dec}/more", *P],
     "is inside the --init source"),
    ("run-dir-contains-teacher", ["pretrain", "--init", "{ed}", "--teacher", "{dec}",
                                  "--run-dir", "{root}/runs", *P, "kd_alpha=0.5"],
     "contains the --teacher source"),
    # paths: adapt outputs (the data-loss bugs)
    ("adapt-out-contains-source", ["adapt", "--from", "{dec}", "--out", "{root}/runs"],
     "contains the --from source"),
    ("adapt-out-is-source", ["adapt", "--from", "{dec}", "--out", "{dec}"],
     "is the --from source"),
    ("adapt-out-inside-source", ["adapt", "--from", "{dec}", "--out", "{dec}/checkpoints/x"],
     "is inside the --from source"),
    ("adapt-out-is-a-file", ["adapt", "--from", "{dec}", "--out", "{root}/files/plain.txt"],
     "is a file"),
    ("adapt-out-empty-string", ["adapt", "--from", "{dec}", "--out", ""],
     "--out '': expected a path"),
    ("adapt-out-not-empty", ["adapt", "--from", "{dec}", "--out", "{root}/full"],
     "already exists and is not empty"),
    ("adapt-out-under-a-file", ["adapt", "--from", "{dec}", "--out", "/etc/passwd/x"],
     "/etc/passwd is a file"),
    ("adapt-out-in-proc", ["adapt", "--from", "{dec}", "--out", "/proc/x", "--quiet"],
     "--out /proc/x: cannot create"),
    ("adapt-missing-source", ["adapt", "--from", "{root}/nothing", "--out", "{root}/new"],
     "error: --from "),
    ("adapt-encdec-source", ["adapt", "--from", "{ed}", "--out", "{root}/new"],
     "must be a decoder-only model"),
    ("adapt-garbage-source", ["adapt", "--from", "{root}/garbage_model", "--out",
                              "{root}/new"], "not valid JSON"),
    ("adapt-corrupt-source", ["adapt", "--from", "{root}/corrupt_run", "--out", "{root}/new"],
     "truncated or corrupt"),
    ("adapt-bad-dtype", ["adapt", "--from", "{dec}", "--out", "{root}/new", "--format", "hf",
                         "--dtype", "float8"], "dtype"),
    ("adapt-negative-warmup", ["adapt", "--from", "{dec}", "--out", "{root}/new",
                               "--warmup-steps", "-1"], "expected an integer >= 0"),
    # paths and encodings: the tokenizer
    ("tokenizer-out-exists", ["tokenizer", "train", "--input", "{root}/files/plain.txt",
                              "--out", "{root}/files/plain.txt", "--vocab-size", "600"],
     "is the --input source"),
    ("tokenizer-out-is-a-dir", ["tokenizer", "train", "--input", "{root}/files/plain.txt",
                                "--out", "{root}/empty", "--vocab-size", "600"],
     "is a directory"),
    ("tokenizer-shipped-model", ["tokenizer", "train", "--input", "{root}/files/plain.txt",
                                 "--vocab-size", "600",
                                 "--out", str(REPO / "data" / "tokenizer.model")],
     "is an existing file"),
    ("tokenizer-binary-input", ["tokenizer", "train", "--input", "{root}/files/binary.bin",
                                "--out", "{root}/t.model", "--vocab-size", "600"],
     "not valid UTF-8"),
    ("tokenizer-latin1-input", ["tokenizer", "train", "--input", "{root}/files/latin1.txt",
                                "--out", "{root}/t.model", "--vocab-size", "600"],
     "not valid UTF-8"),
    ("tokenizer-missing-input", ["tokenizer", "train", "--input", "{root}/nothing.txt",
                                 "--out", "{root}/t.model"], "file not found"),
    ("tokenizer-tiny-vocab", ["tokenizer", "train", "--vocab-size", "10", "--out",
                              "{root}/t.model"], "--vocab-size 10: expected an integer >= 536"),
    ("tokenizer-info-binary", ["tokenizer", "info", "--model", "{root}/files/binary.bin"],
     "not a valid SentencePiece model"),
    ("tokenizer-unknown-action", ["tokenizer", "trian"], "did you mean 'train'"),
    # demo: checked before any directory exists
    ("demo-zero-steps", ["demo", "--pretrain-steps", "0"], "--pretrain-steps"),
    ("demo-unknown-preset", ["demo", "--preset", "nosuch"], "--preset nosuch"),
    ("demo-near-preset", ["demo", "--preset", "tinyy"], "did you mean 'tiny'"),
    ("demo-out-not-empty", ["demo", "--quick", "--out", "{root}/full"],
     "already exists and is not empty"),
    ("demo-out-empty-string", ["demo", "--out", ""], "--out '': expected"),
    ("demo-out-under-a-file", ["demo", "--quick", "--out", "{root}/files/plain.txt/demo"],
     "is a file, not a directory"),
    # study: the same output rules (safe_output.run_directory)
    ("study-out-not-empty", ["study", "--out", "{root}/full"], "already exists and is not empty"),
    ("study-out-under-a-file", ["study", "--out", "{root}/files/plain.txt/s"],
     "is a file, not a directory"),
    ("study-resume-nothing", ["study", "--resume", "--out", "{root}/empty"], "--resume"),
    # names and numbers
    ("unknown-command", ["pretrian"], "did you mean 'pretrain'"),
    ("set-near-key", ["pretrain", "--set", "stepz=10"], "did you mean 'steps'"),
    ("set-near-qualified-key", ["pretrain", "--set", "train.stpes=10"],
     "did you mean 'train.steps'"),
    ("set-not-a-number", ["pretrain", "--set", "lr=fast"], "expected a number"),
    ("set-no-equals", ["pretrain", "--set", "lr"], "expected key=value"),
    ("set-zero-batch", ["pretrain", "--set", "batch_size=0"], "--set data.batch_size=0"),
    ("preset-near-name", ["pretrain", "--preset", "tinyy"], "did you mean 'tiny'"),
    ("lengths-beyond-memory", ["pretrain", "--run-dir", "{root}/new", *P,
                               "encoder_length=1000000000"], "more than the"),
    ("evaluate-beyond-memory", ["evaluate", "--checkpoint", "{dec}", "--set",
                                "encoder_length=10000000"], "GiB available"),
    ("freeze-matches-nothing", ["pretrain", "--run-dir", "{root}/new", *P, "freeze=nosuch"],
     "matches no parameter"),
    ("freeze-everything", ["pretrain", "--run-dir", "{root}/new", *P, "freeze=."],
     "every parameter is frozen"),
    ("freeze-bad-regex", ["pretrain", "--set", "freeze=("], "regular expressions"),
    ("generate-huge-length", ["generate", "--checkpoint", "{dec}", "--max-new-tokens",
                              "1000000000"], "expected an integer in [1, 65536]"),
    ("kd-without-teacher", ["pretrain", "--set", "kd_alpha=0.5"], "need a teacher"),
    ("kd-in-finetune", ["finetune", "--task", "reverse", "--set", "kd_temperature=2"],
     "need a teacher"),
    ("task-near-name", ["finetune", "--task", "revers"], "did you mean 'reverse'"),
    ("unknown-option", ["pretrain", "--stepz", "3"], "unrecognized arguments"),
    ("task-too-long", ["finetune", "--task", "reverse", "--set", "encoder_length=2"],
     "encoder_length >="),
    ("evaluate-zero-batches", ["evaluate", "--checkpoint", "{dec}", "--batches", "0"],
     "--batches: expected an integer >= 1"),
    ("evaluate-negative-seed", ["evaluate", "--checkpoint", "{dec}", "--seed", "-1"],
     "--seed: expected an integer >= 0"),
    ("evaluate-train-key", ["evaluate", "--checkpoint", "{dec}", "--set", "steps=1"],
     "evaluate takes only data.*"),
    ("evaluate-causal-encdec", ["evaluate", "--checkpoint", "{ed}", "--objective",
                                "causal_lm"], "causal_lm"),
    ("generate-zero-tokens", ["generate", "--checkpoint", "{dec}", "--max-new-tokens", "0"],
     "expected an integer in [1, 65536]"),
    ("generate-zero-temperature", ["generate", "--checkpoint", "{dec}", "--temperature", "0"],
     "--temperature: expected a number in (0, inf)"),
    ("generate-nan-top-p", ["generate", "--checkpoint", "{dec}", "--top-p", "nan"],
     "--top-p: expected a number in (0, 1]"),
    ("generate-near-method", ["generate", "--checkpoint", "{dec}", "--method", "greedyy"],
     "did you mean 'greedy'"),
    # prompts and encodings
    ("generate-empty-prompt-decoder", ["generate", "--checkpoint", "{dec}", "--prompt", ""],
     "empty prompt"),
    ("generate-empty-prompt-encdec", ["generate", "--checkpoint", "{ed}", "--prompt", ""],
     "empty prompt"),
    ("generate-undecodable-prompt", ["generate", "--checkpoint", "{dec}", "--prompt",
                                     "caf\udce9"], "not valid UTF-8"),
    ("generate-stdin-invalid-utf8", ["generate", "--checkpoint", "{dec}"], "not valid UTF-8",
     b"Good morrow\n\xff\xfe caf\xe9\n"),
    ("generate-stdin-binary", ["generate", "--checkpoint", "{ed}"], "NUL byte",
     bytes(range(0, 10)) + b"\n"),
    ("generate-bad-tokenizer", ["generate", "--checkpoint", "{dec}", "--tokenizer",
                                "{root}/files/binary.bin", "--prompt", "Hi"],
     "not a valid SentencePiece model"),
    # corrupt files and interrupted runs
    ("checkpoint-missing", ["evaluate", "--checkpoint", "{root}/nothing"], "no such"),
    ("checkpoint-is-a-file", ["evaluate", "--checkpoint", "{root}/files/plain.txt"],
     "expected a directory"),
    ("checkpoint-empty-dir", ["generate", "--checkpoint", "{root}/empty", "--prompt", "Hi"],
     "no config.json"),
    ("checkpoint-truncated", ["generate", "--checkpoint", "{root}/corrupt_run", "--prompt",
                              "Hi"], "truncated or corrupt"),
    ("checkpoint-garbage", ["evaluate", "--checkpoint", "{root}/garbage_model"],
     "not valid JSON"),
    ("init-garbage", ["pretrain", "--init", "{root}/garbage_model", "--run-dir",
                      "{root}/new", *P], "not valid JSON"),
    ("teacher-missing", ["pretrain", "--init", "{ed}", "--teacher", "{root}/nothing",
                         "--run-dir", "{root}/new", *P], "--teacher"),
    ("teacher-is-encdec", ["pretrain", "--init", "{ed}", "--teacher", "{ed}", "--run-dir",
                           "{root}/new", *P], "expected a decoder-only model"),
    ("resume-corrupt-latest", ["pretrain", "--resume", "--run-dir", "{root}/corrupt_run",
                               "--quiet"], "--resume-from-good"),
    ("resume-bad-run-config", ["pretrain", "--resume", "--run-dir", "{root}/badcfg_run"],
     "not valid JSON"),
    ("resume-not-a-run", ["pretrain", "--resume", "--run-dir", "{root}/files/plain.txt"],
     "not a run directory"),
    ("resume-wrong-command", ["finetune", "--resume", "--run-dir", "{dec}"],
     "is a 'pretrain' run"),
    ("resume-and-overwrite", ["pretrain", "--resume", "--overwrite", "--run-dir", "{dec}"],
     "not with --resume"),
    ("resume-from-good-alone", ["pretrain", "--resume-from-good", "--run-dir", "{root}/new"],
     "only with --resume"),
    ("resume-change-model", ["pretrain", "--resume", "--run-dir", "{dec}", "--set",
                             "hidden_size=32"], "only train.* fields may change"),
    ("resume-kd-without-teacher", ["pretrain", "--resume", "--run-dir", "{dec}", "--set",
                                   "kd_alpha=0.3"], "need a teacher"),
]
CASES = [c if len(c) == 4 else (*c, None) for c in CASES]
MESSAGES = {}


def _argv(argv, sandbox):
    paths = {"root": sandbox, "dec": sandbox / "runs" / "dec", "ed": sandbox / "ed"}
    return [a.format(**paths) if "{" in a else a for a in argv]


def _check_one_line_error(status, err, fragment):
    assert status == 2, (status, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error: " in lines[0] and fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(case, sandbox, capsys, monkeypatch):
    name, argv, fragment, stdin = case
    monkeypatch.chdir(sandbox)
    before = snapshot(sandbox)
    status = run(_argv(argv, sandbox), stdin=stdin)
    out, err = capsys.readouterr()
    MESSAGES[name] = _check_one_line_error(status, err, fragment)
    assert diff(before, snapshot(sandbox)) == []
    with capsys.disabled():
        if os.environ.get("MINI_ENCDEC_SHOW_MESSAGES"):
            print(f"\n  {name}: {MESSAGES[name]}")


def test_the_battery_is_large_enough():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


# --- real processes: a real stdin, the C locale, adapt --out over its own source --------------------

def _env(**extra):
    return dict(os.environ, MINI_ENCDEC_BACKEND="numpy", OPENBLAS_NUM_THREADS="1",
                OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)


SUBPROCESS_CASES = [
    # adapt --out a directory holding the source once exited 0 after wiping every other run in it
    ("adapt-out-is-the-runs-dir", ["adapt", "--from", "runs/dec", "--out", "runs"], None,
     "contains the --from source", {}),
    # undecodable bytes on a real stdin, under a C locale (surrogateescape decoding)
    ("generate-stdin-latin1-c-locale", ["generate", "--checkpoint", "runs/dec"],
     "Café\n".encode("latin-1"), "not valid UTF-8", {"LC_ALL": "C", "LANG": "C"}),
    ("generate-stdin-binary", ["generate", "--checkpoint", "ed"], bytes(range(256)),
     "stdin line 1", {}),
    ("run-dir-in-proc", ["finetune", "--task", "sort", "--run-dir", "/proc/x", "--quiet",
                         "--set", "steps=1", "batch_size=2", "encoder_length=16",
                         "decoder_length=16", "eval_batches=1"], None, "--run-dir /proc/x", {}),
]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_bad_input_in_a_real_process(case, sandbox):
    name, argv, stdin, fragment, env = case
    before = snapshot(sandbox)
    proc = subprocess.run([sys.executable, "-m", "mini_encdec", *argv], cwd=sandbox,
                          input=stdin if stdin is not None else b"", capture_output=True,
                          env=_env(**env), timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    _check_one_line_error(proc.returncode, err, fragment)
    assert diff(before, snapshot(sandbox)) == []


# --- what a mistake must not cost: the positive side of the same rules ----------------------------

def test_resume_from_good_keeps_the_corrupt_checkpoint_and_finishes(sandbox, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(sandbox / "corrupt_run", run_dir)
    bad = ckpt.latest_checkpoint(run_dir / "checkpoints")
    good = ckpt.list_checkpoints(run_dir / "checkpoints")[-2][1]
    good_bytes = (good / ckpt.MODEL_FILE).read_bytes()
    assert run(["pretrain", "--resume", "--run-dir", run_dir, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(good) in err and "--resume-from-good" in err
    assert run(["pretrain", "--resume", "--resume-from-good", "--run-dir", run_dir, "--quiet",
                "--set", "steps=3"]) == 0
    kept = bad.with_name(bad.name + ".corrupt")
    assert kept.is_dir() and (kept / ckpt.MODEL_FILE).stat().st_size == 500  # nothing lost
    assert ckpt.load_checkpoint(run_dir).step == 3
    assert f"resumed from {good}" in (run_dir / "log.txt").read_text()
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in l]
    assert steps == [1, 2, 3]
    assert good_bytes  # the good checkpoint was only read


def test_overwrite_replaces_only_once_the_new_output_is_complete(sandbox, tmp_path,
                                                                monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    # a failure while writing: the old content stays, no temporary directory is left
    import mini_encdec.storage.checkpoint as checkpoint_module

    def broken(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "x"))
    monkeypatch.setattr(checkpoint_module, "write_model_files", broken)
    assert run(["adapt", "--from", sandbox / "runs" / "dec", "--out", out, "--overwrite",
                "--quiet"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "old.txt").read_text() == "old"
    monkeypatch.undo()
    assert run(["adapt", "--from", sandbox / "runs" / "dec", "--out", out, "--overwrite",
                "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_target_directory_is_fine(sandbox, tmp_path):
    empty = tmp_path / "e"
    empty.mkdir()
    assert run(["adapt", "--from", sandbox / "runs" / "dec", "--out", empty, "--quiet"]) == 0
    assert (empty / "config.json").is_file()


def test_generate_hints_when_the_reply_ends_at_once(sandbox, capsys, monkeypatch):
    import mini_encdec.models.generate as gen
    monkeypatch.setattr(gen, "generate", lambda model, inputs, **kw: [[1]])  # EOS first
    assert run(["generate", "--checkpoint", sandbox / "ed", "--prompt", "Hi"]) == 0
    out, err = capsys.readouterr()
    assert out == "\n" and "first token was EOS" in err


def test_evaluate_compares_both_architectures_on_the_same_objective(sandbox, capsys):
    lengths = ["--batches", "1", "--set", "batch_size=2", "encoder_length=8",
               "decoder_length=8"]
    results = {}
    for name in ("dec", "ed"):
        path = sandbox / "runs" / "dec" if name == "dec" else sandbox / "ed"
        assert run(["evaluate", "--checkpoint", path, *lengths]) == 0
        out, err = capsys.readouterr()
        assert "objective prefix_lm (the default for both architectures" in err
        results[name] = json.loads(out)
    for r in results.values():
        assert (r["objective"], r["encoder_length"], r["decoder_length"]) == \
            ("prefix_lm", 8, 8)
    # the adapted model starts as its parent: the same target tokens, comparable losses
    assert results["dec"]["tokens"] == results["ed"]["tokens"]
