"""The measurements of `python -m mini_encdec bench`, each run inside a fresh worker process.

    python -c "from mini_encdec.experiments.bench_workers import worker_main; worker_main()" JSON

The one argument is a JSON object (the spec) whose "kind" names a worker (WORKERS):
"train" / "train_torch" (timed training steps, ours or transformers'), "generate" /
"generate_torch" (KV-cached greedy generation, and for ours the cost of one decoding
step), "bandwidth" (bytes/s a matrix-vector product streams). The result is printed as one
JSON line after "@@RESULT@@"; bench.py starts the processes and reads it. The start-up
measurement has a module of its own (bench_startup.py).

A fresh process per measurement keeps peak memory, thread pools and compile caches from
leaking between engines. For the same reason the kernels (numba) are imported only by the
workers that use them (importing numba would add to a numpy worker's memory), and torch /
transformers (optional) only by the PyTorch workers. Our engines run with the command
line's process settings (`ops.tune_process()`: OpenMP's idle threads sleep, glibc keeps
freed memory), as `python -m mini_encdec train`, `demo` and `study` do.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..backend import set_backend
from ..config import GemmaConfig
from ..ops import tune_process
from ..models import build_model
from ..models.decoding import decoder_parts
from ..models.flops import decode_step_bytes
from ..models.generate import as_sequences, generate, make_stepper
from ..storage.interop import save_hf
from ..training.optim import AdamW, OptimConfig
from .bench import READY, bench_config, timed


def _use_engine(engine: str) -> None:
    """Select our backend with the command line's process settings (module doc)."""
    tune_process()
    set_backend(engine)


def _rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_model(preset_name: str, arch: str):
    """A fresh model (seed 0) whose EOS embedding row is zero, so greedy decoding of a
    random model practically never picks EOS and every row runs to its length."""
    config = bench_config(preset_name, arch)
    model = build_model(config, seed=0)
    eos = (config if arch == "decoder" else config.decoder).eos_token_id
    for k, w in model.params.items():
        if k.endswith("embed_tokens.weight"):
            w[eos] = 0
    return model


def _batch(config, arch: str, B: int, T: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    V = config.vocab_size
    if arch == "decoder":
        ids = rng.integers(3, V, (B, T + 1))
        return {"input_ids": ids[:, :-1], "labels": ids[:, 1:].copy()}
    src = rng.integers(3, V, (B, T))
    tgt = rng.integers(3, V, (B, T))
    bos = config.decoder.bos_token_id
    return {"input_ids": src, "attention_mask": np.ones((B, T), dtype=np.int64),
            "decoder_input_ids": np.concatenate([np.full((B, 1), bos), tgt[:, :-1]], 1),
            "labels": tgt}


def _train_ours(spec: dict) -> dict:
    _use_engine(spec["engine"])
    model = bench_model(spec["preset"], spec["arch"])
    batch = _batch(model.config, spec["arch"], spec["B"], spec["T"])
    opt = AdamW(model.params, OptimConfig())

    def step():
        loss, grads = model.loss_and_grads(batch)
        opt.step(model.params, grads, 1e-4)
        return loss

    rss0 = _rss_mib()
    step()  # warm-up (and compilation or cache load for numba)
    if spec.get("loop"):
        _loop(step)
    times = timed(step, spec["steps"])
    out = {"times": times, "peak_rss": _peak_rss_mib(), "step_mem": _peak_rss_mib() - rss0}
    if spec["engine"] == "numba":
        from ..kernels import allocator, threads  # numba: only in the numba engine's process
        out["threads"] = dict(threads.describe(), allocator=allocator.describe()["reason"])
    if spec.get("profile"):
        out["profile"] = _profile(step)
    return out


def _loop(step) -> None:
    """The competitor of --contended: say it is warm, then train until killed."""
    sys.stdout.write(READY + "\n")
    sys.stdout.flush()
    while True:
        step()


def _profile(step, top: int = 12) -> list:
    prof = cProfile.Profile()
    prof.runcall(step)
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("tottime")
    total = sum(v[2] for v in stats.stats.values())
    rows = []
    for (file, line, name), v in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        rows.append([f"{Path(file).parent.name}/{Path(file).name}:{name}", v[1], v[2],
                     v[2] / total if total else 0.0])
    return rows


def _torch_setup(preset_name: str, arch: str, tmp: str):
    """The same model in transformers (eager attention), from our weights."""
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count() or 1)
    model = bench_model(preset_name, arch)
    save_hf(model, tmp)
    cls = (transformers.Gemma2ForCausalLM if arch == "decoder"
           else transformers.T5GemmaForConditionalGeneration)
    tmodel = cls.from_pretrained(tmp, attn_implementation="eager", dtype=torch.float32)
    return model, tmodel


def _compiled(spec: dict) -> bool:
    """Whether the spec asks for PyTorch with torch.compile (inductor) rather than eager."""
    return spec["engine"] == "torch_compile"


def _train_torch(spec: dict) -> dict:
    """transformers' training step, eager or (engine torch_compile) with the model compiled
    by torch.compile (inductor, static shapes); the compile time is the warm-up steps' time
    less as many best timed steps."""
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        model, tmodel = _torch_setup(spec["preset"], spec["arch"], tmp)
    tmodel.train()
    forward = torch.compile(tmodel, dynamic=False) if _compiled(spec) else tmodel
    batch = {k: torch.from_numpy(v) for k, v in
             _batch(model.config, spec["arch"], spec["B"], spec["T"]).items()}
    opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, betas=(0.9, 0.95),
                            weight_decay=0.01)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    V = model.config.vocab_size

    def step():
        logits = forward(**inputs).logits  # soft-capped like ours
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                                 batch["labels"].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    rss0 = _rss_mib()
    # warm-up: compiling (torch_compile) may take more than the first step (a recompile
    # when the optimizer's state appears), so three steps are untimed
    warm = timed(step, 3 if _compiled(spec) else 1)
    if spec.get("loop"):
        _loop(step)
    times = timed(step, spec["steps"])
    out = {"times": times, "peak_rss": _peak_rss_mib(), "step_mem": _peak_rss_mib() - rss0,
           "threads": torch.get_num_threads()}
    if _compiled(spec):
        out["compile_seconds"] = max(0.0, sum(warm) - len(warm) * min(times))
    return out


def bench_prompts(config, arch: str, b: int, P: int):
    rng = np.random.default_rng(2)
    return rng.integers(3, config.vocab_size, (b, P))


def _generate_ours(spec: dict) -> dict:
    _use_engine(spec["engine"])
    model = bench_model(spec["preset"], spec["arch"])
    prompts = bench_prompts(model.config, spec["arch"], spec["b"], spec["P"])
    # warm-up with the full prompt, so prefill (parallel attention) and decoding kernels
    # are compiled or loaded before the timed calls
    generate(model, prompts, max_new_tokens=2)
    rss0 = _rss_mib()
    out = {}
    times = timed(lambda: out.update(tokens=generate(model, prompts,
                                                      max_new_tokens=spec["N"])),
                   spec["repeats"])
    tokens = out["tokens"]
    return dict({"times": times, "new_tokens": int(tokens.shape[1]),
                 "peak_rss": _peak_rss_mib(), "step_mem": _peak_rss_mib() - rss0,
                 "tokens": tokens[:, :16].tolist()},
                **decode_steps(model, prompts, spec["N"]))


MATMUL_ROLES = ("qkv", "o", "cross_q", "cross_o", "gate_up", "down")  # decoding.layer_weights


def step_matmuls_cpu(stepper, rows: int, repeats: int = 20) -> float:
    """CPU seconds of a decoding step's matrix products alone: every weight matrix of the
    cached stepper's plan (models/generate.py, decoding.DecodingPlan) and the output
    table, each times `rows` rows (B, 1, In), through the backend's linear op, back to
    back, under the step's thread setting; the median of `repeats`. What a step takes
    beyond it is the rest: attention, norms, the soft-cap and the Python between the
    kernels."""
    plan = stepper.cache.plan
    mats = [w[r] for w in plan.layers for r in MATMUL_ROLES if r in w] + [plan.embed]
    xs = [np.ones((rows, 1, W.shape[1]), W.dtype) for W in mats]
    times = []
    with stepper.step_threads(rows):
        for _ in range(repeats):
            c0 = time.process_time()
            for x, W in zip(xs, mats):
                plan.linear(x, W)
            times.append(time.process_time() - c0)
    return statistics.median(times)


def decode_steps(model, prompts, N: int) -> dict:
    """What one KV-cached decoding step costs and reads: the prompt's prefill time, the
    median time of the N - 1 one-token steps after it (wall and CPU time, the CPU time
    of its matrix products alone), and the bytes a step must read at the middle step
    (flops.decode_step_bytes: the decoder's weights, the output table, the cached keys and
    values), so the report can set the step beside the memory-bandwidth floor."""
    spec, _ = decoder_parts(model)
    t0 = time.perf_counter()
    stepper = make_stepper(model, as_sequences(prompts, None, spec.cfg.vocab_size, "bench"),
                           True, N)
    logits = stepper.first()
    prefill = time.perf_counter() - t0
    steps, cpu, context = [], [], 0
    for t in range(N - 1):
        tokens = np.argmax(logits, axis=-1)
        if t == N // 2:
            context = int(stepper.cache.next_pos.max())
        t0, c0 = time.perf_counter(), time.process_time()
        logits = stepper.advance(tokens)
        cpu.append(time.process_time() - c0)
        steps.append(time.perf_counter() - t0)
    S = None if isinstance(model.config, GemmaConfig) else prompts.shape[1]
    itemsize = stepper.cache.plan.embed.dtype.itemsize
    return {"prefill": prefill, "decode_step": statistics.median(steps) if steps else None,
            "decode_step_cpu": statistics.median(cpu) if cpu else None,
            "matmuls_cpu": step_matmuls_cpu(stepper, len(prompts)),
            "step_bytes": decode_step_bytes(model.config, context, S, batch=len(prompts),
                                            itemsize=itemsize)}


def _generate_torch(spec: dict) -> dict:
    """transformers' `generate`, eager or (engine torch_compile) compiled the way
    `generate` compiles itself: a static KV cache, and the one-token decoding steps through
    torch.compile (a CompileConfig; inductor's default mode, since the default
    "reduce-overhead" means CUDA graphs, and allowed on the CPU). The compile time is the
    warm-up calls' time less as many best timed calls."""
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        model, tmodel = _torch_setup(spec["preset"], spec["arch"], tmp)
    tmodel.eval()
    if _compiled(spec):
        from transformers import CompileConfig
        compile_config = CompileConfig(mode="default")
        compile_config._compile_all_devices = True  # generate compiles only on GPUs otherwise
        tmodel.generation_config.cache_implementation = "static"
        tmodel.generation_config.compile_config = compile_config
    prompts = torch.from_numpy(bench_prompts(model.config, spec["arch"], spec["b"], spec["P"]))
    N = spec["N"]
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0,
              attention_mask=torch.ones_like(prompts))
    if spec["arch"] == "encdec":
        kw["decoder_start_token_id"] = model.config.decoder.bos_token_id

    def gen(n):
        with torch.no_grad():
            return tmodel.generate(prompts, max_new_tokens=n, min_new_tokens=n, **kw)

    short = timed(lambda: gen(2), 1)[0]  # warm-up calls (torch_compile: compiling)
    rss0 = _rss_mib()
    out = {}
    full = timed(lambda: out.update(seq=gen(N)), 1)[0]
    times = timed(lambda: out.update(seq=gen(N)), spec["repeats"])
    seq = out["seq"]
    new = seq[:, prompts.shape[1]:] if spec["arch"] == "decoder" else seq[:, 1:]
    res = {"times": times, "new_tokens": int(new.shape[1]), "peak_rss": _peak_rss_mib(),
           "step_mem": _peak_rss_mib() - rss0, "tokens": new[:, :16].tolist()}
    if _compiled(spec):
        res["compile_seconds"] = max(0.0, short + full - min(times) * (1 + 2 / N))
    return res


def _bandwidth(spec: dict) -> dict:
    """Bytes/s that a matrix-vector product streams from memory: a float32 matrix of 256
    MiB, far larger than any cache (what a decoding step does with weights that do not
    stay cached); best of 5, on one thread and on the thread policy's cap."""
    from ..kernels import threads  # numba: only in this worker's process
    A = np.ones((2 ** 28 // (4 * 4096), 4096), dtype=np.float32)
    x = np.ones(4096, dtype=np.float32)
    with threads.serial():
        one = A.nbytes / min(timed(lambda: A @ x, 5))
    threads.set_threads(threads.cap())
    return {"one": one, "all": A.nbytes / min(timed(lambda: A @ x, 5)),
            "threads": threads.cap()}


WORKERS = {"train": _train_ours, "train_torch": _train_torch, "generate": _generate_ours,
           "generate_torch": _generate_torch, "bandwidth": _bandwidth}


def worker_main(argv=None) -> None:
    """Entry point of a measurement process: one JSON spec in, one JSON line out."""
    spec = json.loads((argv or sys.argv)[1])
    result = WORKERS[spec["kind"]](spec)
    sys.stdout.write("\n@@RESULT@@" + json.dumps(result) + "\n")
