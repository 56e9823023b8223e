"""`python -m mini_encdec`: every command on the tiny preset, clear errors, kill and resume."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import cli_env, requires_twins, run_cli
from mini_encdec.storage import checkpoint as ckpt
from mini_encdec.cli import COMMANDS
from mini_encdec.cli.overrides import parse_overrides
from mini_encdec.cli.runs import RUN_CONFIG

REPO = Path(__file__).resolve().parent.parent
SMALL_DATA = ["batch_size=2", "encoder_length=16", "decoder_length=16", "eval_batches=2",
              "checkpoint_every=2", "eval_every=2"]


run = run_cli
_env = cli_env


def test_module_entry_point_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "mini_encdec", "--help"], capture_output=True,
                         text=True, env=_env(), check=True).stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    assert run(command, "--help") == 0
    assert "usage:" in capsys.readouterr().out


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory):
    """A decoder-only model pre-trained for 3 steps on the tiny preset."""
    d = tmp_path_factory.mktemp("runs") / "dec"
    assert run("pretrain", "--arch", "decoder", "--run-dir", d, "--quiet",
               "--set", "steps=3", *SMALL_DATA) == 0
    return d


def test_pretrain_decoder_writes_a_complete_run_directory(decoder_run):
    names = {p.name for p in decoder_run.iterdir()}
    assert {RUN_CONFIG, "metrics.jsonl", "log.txt", "checkpoints"} <= names
    run_config = json.loads((decoder_run / RUN_CONFIG).read_text())
    assert run_config["arch"] == "decoder" and run_config["objective"] == "causal_lm"
    assert run_config["model"]["hidden_size"] == 128  # the tiny preset
    assert ckpt.load_checkpoint(decoder_run).step == 3


def test_adapt_then_distill_then_evaluate_and_generate(decoder_run, tmp_path, capsys,
                                                       monkeypatch):
    adapted = tmp_path / "adapted"
    assert run("adapt", "--from", decoder_run, "--out", adapted, "--quiet") == 0
    model = ckpt.load_model(adapted)
    assert type(model).__name__ == "EncDecLM"
    kd = tmp_path / "kd"
    assert run("pretrain", "--init", adapted, "--teacher", decoder_run, "--run-dir", kd,
               "--quiet", "--set", "steps=2", "kd_alpha=0.7", *SMALL_DATA) == 0
    assert "run " in capsys.readouterr().out
    assert run("evaluate", "--checkpoint", kd, "--batches", "2", "--set", "batch_size=2",
               "encoder_length=16", "decoder_length=16") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["objective"] == "prefix_lm" and np.isfinite(result["loss"])
    assert run("generate", "--checkpoint", kd, "--prompt", "To be, or not",
               "--max-new-tokens", "4") == 0
    assert capsys.readouterr().out.strip()
    # interactive: prompts from stdin, one per line, until EOF
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("Good morrow\nWhat news?\n"))
    assert run("generate", "--checkpoint", decoder_run, "--max-new-tokens", "3",
               "--method", "sample", "--seed", "1") == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_init_from_a_decoder_only_model_continues_it(decoder_run, tmp_path, capsys):
    more = tmp_path / "more"
    assert run("pretrain", "--init", decoder_run, "--run-dir", more, "--quiet",
               "--set", "steps=1", "lr=1e-4", *SMALL_DATA) == 0
    cfg = json.loads((more / RUN_CONFIG).read_text())
    assert cfg["arch"] == "decoder" and cfg["objective"] == "causal_lm"
    assert run("pretrain", "--arch", "encdec", "--init", decoder_run, "--run-dir",
               tmp_path / "x") == 2
    assert "the --init model is decoder" in capsys.readouterr().err


@pytest.mark.parametrize("objective", ["ul2", "span_corruption"])
def test_pretrain_encdec_with_denoising_objectives(objective, tmp_path):
    assert run("pretrain", "--objective", objective, "--run-dir", tmp_path / objective,
               "--quiet", "--set", "steps=2", "batch_size=2", "encoder_length=32",
               "decoder_length=32", "eval_batches=1") == 0
    losses = [json.loads(l) for l in (tmp_path / objective / "metrics.jsonl").read_text()
              .splitlines()]
    assert all(np.isfinite(r.get("loss", 0.0)) for r in losses)


def test_finetune_synthetic_task_then_evaluate_and_generate(tmp_path, capsys):
    ft = tmp_path / "ft"
    assert run("finetune", "--task", "reverse", "--run-dir", ft, "--quiet", "--eval-examples",
               "4", "--set", "steps=3", "batch_size=4", "encoder_length=12",
               "decoder_length=12", "eval_batches=1") == 0
    assert "exact_match" in capsys.readouterr().out
    assert any('"exact_match"' in l for l in (ft / "metrics.jsonl").read_text().splitlines())
    assert run("evaluate", "--checkpoint", ft, "--task", "reverse", "--batches", "1",
               "--set", "batch_size=4", "encoder_length=12", "decoder_length=12") == 0
    assert "exact_match" in json.loads(capsys.readouterr().out)
    assert run("generate", "--checkpoint", ft, "--prompt", "abc", "--max-new-tokens", "4") == 0


def test_tokenizer_train_and_info(tmp_path, capsys):
    text = tmp_path / "t.txt"
    corpus = sorted((REPO / "data" / "corpus").rglob("*.txt"))[0]
    text.write_text(corpus.read_text()[:30000])
    out = tmp_path / "tok.model"
    assert run("tokenizer", "train", "--input", text, "--vocab-size", "600", "--out", out) == 0
    assert run("tokenizer", "info", "--model", out) == 0
    assert "600 pieces" in capsys.readouterr().out
    assert run("tokenizer", "info", "--model", tmp_path / "missing.model") == 2
    assert "missing.model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "demo", "study"])
def test_plugin_commands_show_their_own_options(command, capsys):
    pytest.importorskip(f"mini_encdec.experiments.{command}")
    assert run(command, "--help") == 0  # their own options, from their modules
    assert "usage:" in capsys.readouterr().out


# --- clear errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("setting,message", [
    ("colour=blue", "unknown key 'colour'"),
    ("lr=fast", "--set optim.lr=fast: expected a number"),
    ("steps=1.5", "--set train.steps=1.5: expected an integer"),
    ("plot=maybe", "expected true or false"),
    ("head_dim=3", "--set model.head_dim=3: expected an even number"),
    ("model.encoder.vocab_size=100", "invalid model config: EncDecConfig.decoder.vocab_size"),
    ("schedule=linear", "--set optim.schedule=linear: expected one of"),
    ("batch_size=0", "--set data.batch_size=0: expected an integer >= 1"),
    ("lr=-1", "--set optim.lr=-1.0: expected a positive number"),
    ("lr", "expected key=value"),
])
def test_bad_set_values_give_clear_errors(setting, message, tmp_path, capsys):
    assert run("pretrain", "--run-dir", tmp_path / "r", "--set", setting) == 2
    err = capsys.readouterr().err
    assert "error: " in err and message in err, err
    assert not (tmp_path / "r").exists()


def test_decoder_only_rejects_encoder_decoder_keys(tmp_path, capsys):
    assert run("pretrain", "--arch", "decoder", "--run-dir", tmp_path,
               "--set", "cross_attn_warmup_steps=3") == 2
    assert "only for encoder-decoder" in capsys.readouterr().err


def test_parse_overrides_resolves_bare_and_qualified_keys():
    got = parse_overrides(["lr=1e-3", "model.decoder.num_hidden_layers=1", "freeze=embed,mlp",
                           "time_budget=none", "cross_attn_warmup_steps=5"])
    assert got == {"optim.lr": 1e-3, "model.decoder.num_hidden_layers": 1,
                   "optim.freeze": ("embed", "mlp"), "train.time_budget": None,
                   "model.cross_attn_warmup_steps": 5}


def test_corrupt_checkpoint_gives_a_clear_error_naming_the_file(decoder_run, tmp_path, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(decoder_run, broken)
    latest = ckpt.latest_checkpoint(broken / "checkpoints")
    weights = latest / ckpt.MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    assert run("generate", "--checkpoint", broken, "--prompt", "Hi") == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "truncated" in err
    assert run("pretrain", "--run-dir", broken, "--resume", "--quiet", "--set", "steps=5") == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "truncated" in err


def test_resume_rules(decoder_run, tmp_path, capsys):
    assert run("pretrain", "--arch", "decoder", "--run-dir", decoder_run, "--quiet") == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert run("pretrain", "--run-dir", decoder_run, "--resume", "--set", "lr=1") == 2
    assert "only train.* fields may change" in capsys.readouterr().err
    assert run("finetune", "--task", "sort", "--run-dir", decoder_run, "--resume") == 2
    assert "is a 'pretrain' run" in capsys.readouterr().err
    assert run("pretrain", "--run-dir", tmp_path / "none", "--resume") == 2
    assert "not found" in capsys.readouterr().err


def test_overwrite_replaces_a_run_only_once_the_new_one_is_complete(decoder_run, tmp_path,
                                                                     capsys):
    import shutil
    old = tmp_path / "old"
    shutil.copytree(decoder_run, old)
    assert run("pretrain", "--arch", "decoder", "--run-dir", old, "--quiet", "--set",
               "steps=1", *SMALL_DATA) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert ckpt.load_checkpoint(old).step == 3  # untouched
    assert run("pretrain", "--arch", "decoder", "--run-dir", old, "--overwrite", "--quiet",
               "--set", "steps=1", *SMALL_DATA) == 0
    assert ckpt.load_checkpoint(old).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no temporary left


# --- kill and resume ------------------------------------------------------------------------------

FT_ARGS = ["finetune", "--task", "reverse", "--quiet", "--eval-examples", "2", "--set",
           "steps=60", "checkpoint_every=5", "eval_every=20", "batch_size=4",
           "encoder_length=12", "decoder_length=12", "eval_batches=1", "plot=false"]


def _cli(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "mini_encdec", *map(str, argv)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _train_losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl")
                                                .read_text().splitlines()) if "loss" in r]


def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = _cli(*FT_ARGS, "--run-dir", full)
    victim = _cli(*FT_ARGS, "--run-dir", killed)
    # kill once the run is well past a few checkpoints (and certainly not finished)
    deadline = time.time() + 120
    metrics = killed / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 22:
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step_at_kill = ckpt.load_checkpoint(killed).step
    assert 5 <= step_at_kill < 60
    resumed = _cli("finetune", "--resume", "--run-dir", killed, "--quiet")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()
    out_ref, err_ref = reference.communicate(timeout=300)
    assert reference.returncode == 0, err_ref.decode()
    assert _train_losses(killed) == _train_losses(full)
    assert [s for s, _ in _train_losses(full)] == list(range(1, 61))
    a, b = ckpt.load_checkpoint(full), ckpt.load_checkpoint(killed)
    assert a.step == b.step == 60
    for k in a.params:
        assert a.params[k].tobytes() == b.params[k].tobytes(), k
    for k in a.optimizer_arrays:
        assert a.optimizer_arrays[k].tobytes() == b.optimizer_arrays[k].tobytes(), k
    assert "resumed from" in (killed / "log.txt").read_text()


@requires_twins
@pytest.mark.parametrize("var, value", [("MINI_ENCDEC_MALLOC", "often"),
                                        ("MINI_ENCDEC_THREADS", "zero")])
def test_bad_speed_setting_is_one_line_before_any_work(tmp_path, var, value):
    """The numba backend's settings (kernels/threads.py, kernels/allocator.py) are read
    when a command starts: a bad value is one error line, exit status 2, nothing written."""
    env = {k: v for k, v in _env().items() if k != "MINI_ENCDEC_BACKEND"}
    out = subprocess.run([sys.executable, "-m", "mini_encdec", "pretrain", "--run-dir",
                          str(tmp_path / "run"), "--set", "steps=1"],
                         capture_output=True, text=True, env=dict(env, **{var: value}),
                         timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and var in lines[0] and "error:" in lines[0]
    assert not (tmp_path / "run").exists()
