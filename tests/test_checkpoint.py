"""Checkpoints: exact round trips, atomic replacement, clear errors naming the file."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mini_encdec.storage import checkpoint as ckpt
from mini_encdec.config import encdec_preset, preset
from mini_encdec.models import init_params

SMALL = dict(vocab_size=48, hidden_size=16, intermediate_size=32, num_attention_heads=2,
             num_key_value_heads=1, head_dim=8, num_hidden_layers=2)


def _config():
    return preset("tiny", **SMALL)


def _save(root, step, config, params, **kw):
    opt = {f"m.{k}": v * 0.5 for k, v in params.items()}
    opt.update({f"v.{k}": v * v for k, v in params.items()})
    state = {"rng": np.random.default_rng(3).bit_generator.state, "data": {"cursor": step}}
    return ckpt.save_checkpoint(root, step, config=config, params=params,
                                optimizer_arrays=opt, state=state, **kw)


def test_round_trip_is_exact(tmp_path):
    config = encdec_preset("tiny", **SMALL)
    params = init_params(config, seed=1)
    path = _save(tmp_path, 7, config, params)
    assert path.name == "step_000007"
    ck = ckpt.load_checkpoint(path)
    assert ck.config == config and ck.step == 7
    assert set(ck.params) == set(params)
    for k in params:
        assert ck.params[k].dtype == params[k].dtype
        assert ck.params[k].tobytes() == params[k].tobytes()
        assert ck.optimizer_arrays[f"v.{k}"].tobytes() == (params[k] ** 2).tobytes()
    rng = np.random.default_rng()
    rng.bit_generator.state = ck.state["rng"]
    assert rng.random() == np.random.default_rng(3).random()
    # the checkpoint directory is also a model directory
    model = ckpt.load_model(path)
    assert model.config == config
    # ... and a run directory / checkpoints directory resolve to the latest checkpoint
    assert ckpt.load_checkpoint(tmp_path).step == 7


def test_keep_last_and_latest(tmp_path):
    config = _config()
    params = init_params(config)
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, config, params, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000004"
    assert ckpt.latest_checkpoint(tmp_path / "nothing") is None


def test_resaving_a_step_replaces_it(tmp_path):
    config = _config()
    p1 = init_params(config, seed=1)
    p2 = init_params(config, seed=2)
    _save(tmp_path, 5, config, p1)
    _save(tmp_path, 5, config, p2)
    ck = ckpt.load_checkpoint(tmp_path / "step_000005")
    k = "model.embed_tokens.weight"
    assert ck.params[k].tobytes() == p2[k].tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000005"]


def test_save_model_and_load_model(tmp_path):
    config = _config()
    params = init_params(config, seed=4)
    ckpt.save_model(tmp_path / "m", config, params)
    ckpt.save_model(tmp_path / "m", config, params)  # over an existing directory
    model = ckpt.load_model(tmp_path / "m")
    assert model.config == config
    assert all(model.params[k].tobytes() == params[k].tobytes() for k in params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_crash_before_the_directory_rename_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    config = _config()
    good = init_params(config, seed=1)
    _save(tmp_path, 1, config, good)
    real_rename = os.rename

    def crash(src, dst):
        if str(dst).endswith("step_000002"):
            raise OSError("simulated crash")
        return real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", crash)
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path, 2, config, init_params(config, seed=2))
    monkeypatch.setattr(ckpt.os, "rename", real_rename)
    ck = ckpt.load_checkpoint(tmp_path)
    assert ck.step == 1
    assert ck.params["model.norm.weight"].tobytes() == good["model.norm.weight"].tobytes()
    assert any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    _save(tmp_path, 3, config, good)  # the next save sweeps the leftover
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_sigkill_at_random_moments_never_leaves_an_unloadable_checkpoint(tmp_path):
    # A subprocess writes checkpoints in a loop (step s holds weights equal to s); we kill
    # it at several moments and check the newest checkpoint loads and is consistent.
    code = textwrap.dedent(f"""
        import numpy as np
        from mini_encdec.storage import checkpoint as ckpt
        from mini_encdec.config import preset
        from mini_encdec.models import param_shapes
        config = preset("tiny", **{SMALL!r})
        shapes = param_shapes(config)
        print("ready", flush=True)
        step = 0
        while True:
            step += 1
            params = {{k: np.full(s, step, np.float32) for k, s in shapes.items()}}
            ckpt.save_checkpoint({str(tmp_path)!r}, step, config=config, params=params,
                                 optimizer_arrays={{"m.x": np.full(1000, step, np.float32)}},
                                 state={{"step": step}}, keep=2)
    """)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    for delay in (0.15, 0.3, 0.45):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        ck = ckpt.load_checkpoint(tmp_path)
        assert ck.step >= 1 and ck.state == {"step": ck.step}
        assert np.all(ck.params["model.norm.weight"] == ck.step)
        assert np.all(ck.optimizer_arrays["m.x"] == ck.step)


# --- clear errors ---------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    config = _config()
    return _save(tmp_path / "run", 2, config, init_params(config))


def test_truncated_weights_name_the_file(saved):
    f = saved / ckpt.MODEL_FILE
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors.*truncated"):
        ckpt.load_checkpoint(saved)


def test_altered_optimizer_file_names_the_file(saved):
    f = saved / ckpt.OPTIMIZER_FILE
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"optimizer\.safetensors.*corrupt"):
        ckpt.load_checkpoint(saved)


def test_truncated_state_json_names_the_file(saved):
    f = saved / ckpt.STATE_FILE
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(ckpt.CheckpointError, match=r"trainer_state\.json.*not valid JSON"):
        ckpt.load_checkpoint(saved)


def test_missing_file_names_the_file(saved):
    (saved / ckpt.MODEL_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors: file missing"):
        ckpt.load_checkpoint(saved)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.load_model(tmp_path / "nope")
    with pytest.raises(ckpt.CheckpointError, match="no config.json"):
        ckpt.load_model(tmp_path)


def test_weights_not_matching_the_config_name_the_file(tmp_path):
    config = _config()
    ckpt.save_model(tmp_path / "m", config, init_params(config))
    bigger = config.replace(hidden_size=32).to_dict()
    (tmp_path / "m" / ckpt.CONFIG_FILE).write_text(json.dumps(bigger))
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors: the weights do not "
                                                   r"match the config.*shape"):
        ckpt.load_model(tmp_path / "m")


def test_garbage_safetensors_in_a_model_directory(tmp_path):
    config = _config()
    ckpt.save_model(tmp_path / "m", config, init_params(config))
    (tmp_path / "m" / ckpt.MODEL_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ckpt.CheckpointError, match=r"model\.safetensors: not a readable"):
        ckpt.load_model(tmp_path / "m")


def test_bad_config_json_names_the_file(tmp_path):
    config = _config()
    ckpt.save_model(tmp_path / "m", config, init_params(config))
    (tmp_path / "m" / ckpt.CONFIG_FILE).write_text(json.dumps({"hidden_size": -1}))
    with pytest.raises(ckpt.CheckpointError, match=r"config\.json: not a valid model config"):
        ckpt.load_model(tmp_path / "m")


def test_atomic_write_json_replaces_whole_files(tmp_path):
    f = tmp_path / "x.json"
    ckpt.atomic_write_json(f, {"a": 1})
    ckpt.atomic_write_json(f, {"a": 2})
    assert json.loads(f.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
