"""`python -m mini_encdec bench --study-profile`: the study's training and probe steps,
one thread.

The study (experiments/study) trains the `tiny` preset on one thread per run: PrefixLM
windows of 64 encoder + 64 decoder tokens for the encoder-decoder arms and causal LM over
128 tokens for the decoder-only arms, batch 16. This measures exactly those steps
(forward, backward, AdamW; numba backend; the ed_kd arm's PrefixLM + distillation
step with its teacher's forward; and a representation probe's step, 128 tokens, on the
decoder-only model and on the encoder-decoder's encoder) in one fresh process with every pool at one
thread (MINI_ENCDEC_THREADS, NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS, OMP_NUM_THREADS = 1)
and reports, per step:

- ms per step in CPU time (time.process_time: on a busy machine, wall time also counts
  the time other programs had the core) and wall time;
- counted FLOPs (models/flops.py) / CPU time as a share of the one-thread float32 matmul
  peak measured in the same process, in CPU time too, before and after the steps (the
  better one: a busy machine can slow the core for seconds at a time);
- where the time goes, from cProfile over a few more steps (its overhead lands in
  "everything else"; the shares are of the profiled steps):
    output layer + loss   ops.output_loss_and_grads (logits, soft-capped cross-entropy
                          and their gradients)
    other matmuls         the linear layers' products (projections, MLP; ops.linear_*,
                          the teacher's nn/linear.py) outside it
    attention core        ops.attention_core_forward / _backward
    everything else       norms, RoPE, GeGLU activation, embedding, AdamW, Python

The worker prints one JSON line after "@@RESULT@@" like bench_workers.py's.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ONE_THREAD = {k: "1" for k in ("MINI_ENCDEC_THREADS", "NUMBA_NUM_THREADS",
                               "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
# (label, arch, batch B, decoder (or decoder-only) tokens T, encoder tokens S); arch
# "encdec+kd": PrefixLM + distillation from a decoder-only teacher of the same preset
# (the study's ed_kd arm, TrainConfig's kd_alpha 0.5 and kd_temperature 1.0)
# "probe-decoder" / "probe-encdec": a representation probe's step (models/classifier.py on
# the study's rep_length of 128 tokens; the encoder-decoder's probe reads its encoder)
STUDY_STEPS = (("enc-dec PrefixLM 64+64", "encdec", 16, 64, 64),
               ("enc-dec PrefixLM+KD 64+64", "encdec+kd", 16, 64, 64),
               ("decoder-only causal 128", "decoder", 16, 128, None),
               ("probe, decoder-only 128", "probe-decoder", 16, 128, None),
               ("probe, enc-dec encoder 128", "probe-encdec", 16, 128, None))
PRESET = "tiny"
CATEGORIES = ("output layer + loss", "other matmuls", "attention core", "everything else")
MODEL_FILES = ("gemma.py", "encdec.py")  # the output-layer callers of the linear layer


def _key(func) -> tuple:
    """(file name, function name) of a pstats function key."""
    file, _, name = func
    return Path(file).name, name


def _is_linear(file: str, name: str, func) -> bool:
    """A linear layer's function: the op (ops.py), its twin (kernels/linear.py) or the
    reference (nn/linear.py)."""
    return (name in ("linear_forward", "linear_backward", "linear_unchecked")
            and (file == "ops.py" or (file == "linear.py"
                                      and Path(func[0]).parent.name in ("nn", "kernels"))))


def step_shares(stats: pstats.Stats) -> dict:
    """Seconds of the profiled calls per CATEGORIES entry (plus "total", all of them).
    The output layer is ops.output_loss_and_grads; when a model computes it unfused (the
    path that keeps the logits), the linear-layer products the model files call directly
    and ops' soft-capped cross-entropy count there too."""
    raw = stats.stats
    out = dict.fromkeys(CATEGORIES, 0.0)
    for func, (_, _, _, ct, callers) in raw.items():
        file, name = _key(func)
        if file == "ops.py" and name in ("output_loss_and_grads",
                                         "softcap_cross_entropy_forward",
                                         "softcap_cross_entropy_backward"):
            out["output layer + loss"] += ct
        elif file == "ops.py" and name in ("attention_core_forward", "attention_core_backward"):
            out["attention core"] += ct
        elif _is_linear(file, name, func):
            for caller, (_, _, _, c_ct) in callers.items():
                cfile, cname = _key(caller)
                if _is_linear(cfile, cname, caller):
                    continue  # counted with the outer linear function's own callers
                out["output layer + loss" if cfile in MODEL_FILES else "other matmuls"] += c_ct
    total = sum(v[2] for v in raw.values())
    out["everything else"] = max(0.0, total - sum(out.values()))
    out["total"] = total
    return out


def _kd_batch(batch: dict, S: int, T: int) -> dict:
    """The student batch with the teacher's keys (text/batching.py's teacher_fields: the
    teacher reads prefix ++ targets and predicts target j at position S + j - 1)."""
    from ..objectives.example import Example
    from ..text.batching import teacher_fields
    examples = [Example(src, tgt) for src, tgt in zip(batch["input_ids"], batch["labels"])]
    return dict(batch, **teacher_fields(examples, S, T))


def step_flops(config, teacher_config, B: int, T: int, S) -> int:
    """Counted FLOPs of a training step (models/flops.py); with a teacher also its forward
    over the S + T tokens, the logits of the T positions it is asked about only."""
    from ..models.flops import forward_flops, train_step_flops
    flops = train_step_flops(config, B, T, S)
    if teacher_config is not None:  # less the S unused positions' logits, 2 D V each
        unused = 2 * S * teacher_config.hidden_size * teacher_config.vocab_size
        flops += B * (forward_flops(teacher_config, S + T) - unused)
    return flops


def probe_flops(config, B: int, T: int) -> int:
    """Counted FLOPs of a probe's step: the stack the probe reads (the decoder-only model,
    or the encoder of an encoder-decoder) on T tokens, forward + backward (3 x forward);
    no output layer, and the head's (B, D) x (D, 2) is negligible."""
    from ..config import EncDecConfig
    from ..models.flops import stack_forward_flops
    if isinstance(config, EncDecConfig):
        return 3 * B * stack_forward_flops(config.encoder, T, causal=False)
    return 3 * B * stack_forward_flops(config, T, causal=True)


def _probe_batch(B: int, T: int, V: int) -> dict:
    """B inputs of T tokens (the last real token is read), with class labels."""
    rng = np.random.default_rng(1)
    return {"input_ids": rng.integers(3, V, (B, T)),
            "attention_mask": np.ones((B, T), dtype=np.int64),
            "labels": rng.integers(0, 2, B)}


def _one_step(label, arch, B, T, S, steps: int, profile_steps: int) -> dict:
    from ..models.classifier import SequenceClassifier
    from ..training.distill import kd_loss_and_grads
    from ..training.optim import AdamW, OptimConfig
    from .bench_workers import _batch, bench_model
    kd = arch == "encdec+kd"
    probe = arch.startswith("probe-")
    arch = "encdec" if kd else arch.removeprefix("probe-")
    model = bench_model(PRESET, arch)
    teacher = bench_model(PRESET, "decoder") if kd else None
    batch = _batch(model.config, arch, B, T)
    if probe:  # the study's probe: the backbone with a 2-class head, all fine-tuned
        flops = probe_flops(model.config, B, T)
        model = SequenceClassifier.from_backbone(model, num_labels=2, seed=0,
                                                 label_names=("no", "yes"))
        batch = _probe_batch(B, T, model.config.vocab_size)
    else:
        flops = step_flops(model.config, teacher and teacher.config, B, T, S)
    if not probe and arch == "encdec":  # S encoder tokens (the bench batch has S = T)
        batch["input_ids"] = batch["input_ids"][:, :S]
        batch["attention_mask"] = batch["attention_mask"][:, :S]
    if kd:
        batch = _kd_batch(batch, S, T)
    opt = AdamW(model.params, OptimConfig())

    def step():
        if kd:
            loss, grads, _ = kd_loss_and_grads(model, teacher, batch, alpha=0.5,
                                               temperature=1.0)
        else:
            loss, grads = model.loss_and_grads(batch)
        opt.step(model.params, grads, 1e-4)
        return loss

    step()  # warm-up: compile or load the kernels
    cpu, wall = [], []
    for _ in range(steps):
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    prof = cProfile.Profile()
    for _ in range(profile_steps):
        prof.runcall(step)
    shares = step_shares(pstats.Stats(prof))
    return {"label": label, "arch": arch, "kd": kd, "probe": probe, "B": B, "T": T, "S": S,
            "cpu": cpu, "wall": wall, "flops": flops,
            "shares": {k: v / profile_steps for k, v in shares.items()}}


def cpu_matmul_peak(n: int = 2048, repeats: int = 7) -> float:
    """float32 matmul FLOP/s per CPU second: bench.matmul_peak's (n, n) @ (n, n), timed
    in CPU time like the steps (one thread here, so the same as wall time on a quiet
    machine; on a busy one it leaves out the time other programs had the core)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = np.inf
    for _ in range(repeats):
        t0 = time.process_time()
        a @ b
        best = min(best, time.process_time() - t0)
    return 2.0 * n ** 3 / best


def worker_main(argv=None) -> None:
    """One JSON spec in ({"steps", "profile_steps"}), one JSON line out."""
    from ..backend import set_backend
    from ..ops import tune_process
    spec = json.loads((argv or sys.argv)[1])
    tune_process()  # as the study's command line runs
    set_backend("numba")
    # one thread: the parent started this process with ONE_THREAD. Measured before and
    # after the steps, the better one kept (a busy machine slows a core for a while)
    peaks = [cpu_matmul_peak()]
    rows = [_one_step(*s, steps=spec["steps"], profile_steps=spec["profile_steps"])
            for s in STUDY_STEPS]
    peaks.append(cpu_matmul_peak())
    sys.stdout.write("\n@@RESULT@@" + json.dumps({"peak": max(peaks), "peaks": peaks,
                                                   "rows": rows}) + "\n")


def render(result: dict, machine: dict) -> str:
    """The markdown section of the study profile."""
    peak = result["peak"]
    L = [f"# mini_encdec study profile ({time.strftime('%Y-%m-%d %H:%M')})", "",
         f"Machine: {machine['cpu']}, {machine['cores']} cores; NumPy {machine['numpy']} "
         f"({machine['blas']}), Numba {machine['numba']}. Load average at start: "
         f"{', '.join(f'{x:.2f}' for x in machine['load_average'])} (a busy machine makes "
         "the wall times longer; CPU times much less so).", "",
         f"The study's training steps and its representation probes' steps (preset "
         f"`{PRESET}`, numba backend, forward + backward + AdamW), one thread. One-thread float32 matmul peak, measured in the same "
         f"process before and after the steps (the better kept; "
         f"{' and '.join(f'{p / 1e9:.1f}' for p in result.get('peaks', [peak]))}): "
         f"**{peak / 1e9:.1f} GFLOP/s** per CPU second. '% of peak' = counted matmul FLOPs "
         "(models/flops.py) / best CPU time per step / that peak.", "",
         "| step | ms/step CPU (best / median) | ms/step wall (median) | GFLOP/step "
         "| % of peak | " + " | ".join(CATEGORIES) + " |",
         "|---|---|---|---|---|" + "---|" * len(CATEGORIES)]
    for r in result["rows"]:
        best, med = min(r["cpu"]), float(np.median(r["cpu"]))
        sh = r["shares"]
        cells = " | ".join(f"{100 * sh[c] / sh['total']:.0f}%" if sh["total"] else "?"
                           for c in CATEGORIES)
        L.append(f"| {r['label']}, B={r['B']} | {1e3 * best:.0f} / {1e3 * med:.0f} "
                 f"| {1e3 * float(np.median(r['wall'])):.0f} | {r['flops'] / 1e9:.2f} "
                 f"| {100 * r['flops'] / best / peak:.0f}% | {cells} |")
    L += ["", "Shares of the step time from cProfile over the profiled steps (its per-call "
          "overhead counts in 'everything else'). output layer + loss: the tied output "
          "matrix's logits, the soft-capped cross-entropy and their gradients "
          "(ops.output_loss_and_grads); other matmuls: the projections' and MLP's "
          "linear-layer products (ops.linear_*); attention core: ops.attention_core_*. With KD the "
          "teacher's forward counts in its rows (its output layer, on the T positions the "
          "student is taught at, in 'other matmuls'; its softmax in 'everything else') and "
          "its FLOPs in the step's. A probe's step is the classifier of models/classifier.py "
          "on 128 tokens (the encoder-decoder's reads its encoder): no output layer.", ""]
    return "\n".join(L)
