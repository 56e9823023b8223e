"""The library leaves its host process alone: importing mini_encdec and training and
generating through the Python API change no environment variable and no allocator
setting (ops.tune_process is the command line's opt-in to both; SPEC.md section 9)."""

import json
import os
import subprocess
import sys

import pytest

# Runs in a fresh interpreter: os.environ before any mini_encdec import, then the API
# (build, forward, loss and gradients, a few training steps, generation, a classifier),
# then os.environ and the allocator's state after.
PROBE = r"""
import json, os, sys
before = dict(os.environ)
import numpy as np
import mini_encdec
from mini_encdec import ops
from mini_encdec.config import EncDecConfig, GemmaConfig
from mini_encdec.models import build_model
from mini_encdec.models.classifier import SequenceClassifier
from mini_encdec.models.generate import generate
from mini_encdec.training.train import train

base = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, intermediate_size=24, sliding_window=3)
model = build_model(EncDecConfig(encoder=GemmaConfig(**base), decoder=GemmaConfig(**base)))
rng = np.random.default_rng(0)
batch = {"input_ids": rng.integers(3, 40, (2, 6)), "attention_mask": np.ones((2, 6), np.int64),
         "decoder_input_ids": rng.integers(3, 40, (2, 5)), "labels": rng.integers(3, 40, (2, 5))}
model.forward(batch)
model.loss_and_grads(batch)
train(model, [batch] * 3, progress=False, steps=3)
generate(model, batch["input_ids"], max_new_tokens=4)
gemma = build_model(GemmaConfig(**base))
generate(gemma, rng.integers(3, 40, (1, 4)), max_new_tokens=4, method="beam", num_beams=2)
SequenceClassifier.from_backbone(model, 3).loss_and_grads(
    {"input_ids": batch["input_ids"], "labels": np.array([0, 2])})
after = dict(os.environ)
kernels = sys.modules.get("mini_encdec.kernels")
allocator = kernels.allocator.describe() if kernels else None
print(json.dumps({"backend": mini_encdec.get_backend(), "kernels": kernels is not None,
                  "changed": {k: [before.get(k), after.get(k)] for k in set(before) | set(after)
                              if before.get(k) != after.get(k)},
                  "allocator": allocator}))
"""


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_the_python_api_changes_no_environment_variable_and_no_allocator_setting(backend):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                             "KMP_DUPLICATE_LIB_OK")}
    env["MINI_ENCDEC_BACKEND"] = backend
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    assert report["changed"] == {}
    if backend == "numba":
        assert report["kernels"]  # the kernels ran, and still left the host alone
        assert report["allocator"]["applied"] is False
        assert report["allocator"]["setting"] is None  # never even read


def test_the_command_line_opts_in():
    """`python -m mini_encdec` calls ops.tune_process first; so may a program that owns
    its process, and then the wait policy is set (unless the user chose one)."""
    from mini_encdec import __main__ as entry
    import inspect
    assert "tune_process()" in inspect.getsource(entry.main)
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["MINI_ENCDEC_BACKEND"] = "numba"
    code = ("import os; from mini_encdec import ops; ops.tune_process(); ops.twins(); "
            "from mini_encdec.kernels import allocator; "
            "print(os.environ.get('OMP_WAIT_POLICY'), allocator.describe()['setting'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["PASSIVE", "keep"]
