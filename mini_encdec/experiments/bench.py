"""Speed benchmark: `python -m mini_encdec bench [--out FILE] [--quick] ...`.

In one run, for the presets tiny and small, decoder-only (Gemma 2) and encoder-decoder
(T5Gemma), it measures:
  - training-step tokens/s (forward, backward and the AdamW update of mini_encdec.training.optim)
    for the numpy and numba backends, and for PyTorch (`Gemma2ForCausalLM` /
    `T5GemmaForConditionalGeneration` from transformers, eager attention, torch AdamW,
    the same weights and batch shapes) when torch and transformers are installed;
  - the achieved FLOP/s (matmul FLOPs from mini_encdec.models.flops, masked attention
    pairs not counted) as a fraction of this machine's float32 matmul peak, measured in the
    same run by timing a large `np.matmul`;
  - KV-cached greedy generation tokens/s at batch 1 and 8 (64 new tokens after a
    128-token prompt), against `transformers` `generate`;
  - peak memory (peak resident set size of the process that ran the measurement, and the
    growth during the measured steps);
  - start-up: a fresh process importing mini_encdec and running one numba training step,
    with an empty compile cache (cold) and again with the cache on disk (warm);
  - with --contended, the training steps again while another CPU-bound program runs: a
    busy loop, and a second copy of the same training (same engine, config and thread
    settings), each started in its own session (as from another terminal) and stopped
    after the measurement; the table shows the median step beside each load and its
    ratio to the quiet median. For numba the same two loads are also measured with one
    thread (MINI_ENCDEC_THREADS=1, the copy too), the reference the thread policy
    (mini_encdec/kernels/threads.py) must not be slower than.

Every measurement runs in its own fresh Python process (so peak memory, thread pools and
compile caches don't leak between engines) and reports the best of its timed repetitions
(the median is shown too). The parent also records the CPU time that processes other
than the measurement (and its competitor) used meanwhile, so a run disturbed by someone
else's job shows it. The EOS row of the embedding is zeroed so greedy decoding never
stops early; PyTorch gets the identical weights, and the table says whether both
generated the same tokens. The markdown table goes to stdout and to
`runs/bench-<time>/bench.md` (or --out). Shape letters: B batch, T tokens per row.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP = "benchmark tokens/s and matmul-peak fraction (and PyTorch when installed)"  # in --help
PRESETS = ("tiny", "small")
ARCHS = ("decoder", "encdec")
ENGINES = ("numpy", "numba", "torch")
LOADS = ("busy", "copy")  # --contended: a busy-loop process; a second copy of the training
LOAD_NAMES = {"busy": "busy loop", "copy": "2nd copy"}
NO_CLIFF = 2.5  # the target: a contended step takes at most this many quiet steps
TRAIN_VS_TORCH = 1.3  # the target: training tokens/s at least this many times PyTorch's
PEAK_SHARE = 0.7  # the target on `small`: this share of the measured matmul peak
GEN_VS_TORCH = {1: 5, 8: 3}  # batch -> the target generation speed-up over transformers
NOISE = 0.05  # "not slower than one thread" allows the run-to-run noise of a median step


def add_arguments(p) -> None:
    p.add_argument("--presets", default=",".join(PRESETS),
                   help="comma-separated presets (default tiny,small)")
    p.add_argument("--archs", default=",".join(ARCHS),
                   help="comma-separated: decoder (Gemma 2) and/or encdec (T5Gemma)")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help="comma-separated: numpy, numba, torch (torch is skipped when torch or "
                        "transformers is missing)")
    p.add_argument("--batch-size", type=int, default=8, help="training batch B (default 8)")
    p.add_argument("--seq-len", type=int, default=128,
                   help="training tokens per row T; an encoder-decoder gets T encoder and T "
                        "decoder tokens (default 128)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (default 5)")
    p.add_argument("--prompt-len", type=int, default=128, help="generation prompt length")
    p.add_argument("--new-tokens", type=int, default=64, help="generated tokens per row")
    p.add_argument("--gen-batches", default="1,8", help="generation batch sizes (default 1,8)")
    p.add_argument("--gen-repeats", type=int, default=2,
                   help="timed generate calls per measurement (default 2)")
    p.add_argument("--no-startup", action="store_true", help="skip the cold/warm start timing")
    p.add_argument("--profile", action="store_true",
                   help="also profile one numba training step per config (top functions)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny decoder only, 2 steps, batch 1 generation of 8 tokens")
    p.add_argument("--out", default=None,
                   help="write the markdown here (default runs/bench-<time>/bench.md)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds allowed for one measurement process (default 1800)")
    p.add_argument("--contended", action="store_true",
                   help="also time the training steps beside a busy-loop process and beside a "
                        "second copy of the same training, and report the slow-down")


# --- the measurements, run inside fresh worker processes -----------------------------------------

def _rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _config(preset_name: str, arch: str):
    from ..config import encdec_preset, preset
    return preset(preset_name) if arch == "decoder" else encdec_preset(preset_name)


def _model(preset_name: str, arch: str):
    """A fresh model (seed 0) whose EOS embedding row is zero, so greedy decoding of a
    random model practically never picks EOS and every row runs to its length."""
    from ..models import build_model
    config = _config(preset_name, arch)
    model = build_model(config, seed=0)
    eos = (config if arch == "decoder" else config.decoder).eos_token_id
    for k, w in model.params.items():
        if k.endswith("embed_tokens.weight"):
            w[eos] = 0
    return model


def _batch(config, arch: str, B: int, T: int, seed: int = 1) -> dict:
    import numpy as np
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


def _timed(fn, repeats: int) -> list:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _train_ours(spec: dict) -> dict:
    from ..backend import set_backend
    from ..training.optim import AdamW, OptimConfig
    set_backend(spec["engine"])
    model = _model(spec["preset"], spec["arch"])
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
    times = _timed(step, spec["steps"])
    out = {"times": times, "peak_rss": _peak_rss_mib(), "step_mem": _peak_rss_mib() - rss0}
    if spec["engine"] == "numba":
        from ..kernels import allocator, threads
        out["threads"] = dict(threads.describe(), allocator=allocator.describe()["reason"])
    if spec.get("profile"):
        out["profile"] = _profile(step)
    return out


def _loop(step) -> None:
    """The competitor of --contended: say it is warm, then train until killed."""
    sys.stdout.write(_READY + "\n")
    sys.stdout.flush()
    while True:
        step()


def _profile(step, top: int = 12) -> list:
    import cProfile
    import io
    import pstats
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
    from ..storage.interop import save_hf
    torch.set_num_threads(os.cpu_count() or 1)
    model = _model(preset_name, arch)
    save_hf(model, tmp)
    cls = (transformers.Gemma2ForCausalLM if arch == "decoder"
           else transformers.T5GemmaForConditionalGeneration)
    tmodel = cls.from_pretrained(tmp, attn_implementation="eager", dtype=torch.float32)
    return model, tmodel


def _train_torch(spec: dict) -> dict:
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        model, tmodel = _torch_setup(spec["preset"], spec["arch"], tmp)
    tmodel.train()
    batch = {k: torch.from_numpy(v) for k, v in
             _batch(model.config, spec["arch"], spec["B"], spec["T"]).items()}
    opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, betas=(0.9, 0.95),
                            weight_decay=0.01)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    V = model.config.vocab_size

    def step():
        logits = tmodel(**inputs).logits  # soft-capped like ours
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V),
                                                 batch["labels"].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    rss0 = _rss_mib()
    step()
    if spec.get("loop"):
        _loop(step)
    times = _timed(step, spec["steps"])
    return {"times": times, "peak_rss": _peak_rss_mib(), "step_mem": _peak_rss_mib() - rss0,
            "threads": torch.get_num_threads()}


def _prompts(config, arch: str, b: int, P: int):
    import numpy as np
    rng = np.random.default_rng(2)
    return rng.integers(3, config.vocab_size, (b, P))


def _generate_ours(spec: dict) -> dict:
    from ..backend import set_backend
    from ..models.generate import generate
    set_backend(spec["engine"])
    model = _model(spec["preset"], spec["arch"])
    prompts = _prompts(model.config, spec["arch"], spec["b"], spec["P"])
    # warm-up with the full prompt, so prefill (parallel attention) and decoding kernels
    # are compiled or loaded before the timed calls
    generate(model, prompts, max_new_tokens=2)
    rss0 = _rss_mib()
    out = {}
    times = _timed(lambda: out.update(tokens=generate(model, prompts,
                                                      max_new_tokens=spec["N"])),
                   spec["repeats"])
    tokens = out["tokens"]
    return dict({"times": times, "new_tokens": int(tokens.shape[1]),
                 "peak_rss": _peak_rss_mib(), "step_mem": _peak_rss_mib() - rss0,
                 "tokens": tokens[:, :16].tolist()},
                **_decode_steps(model, prompts, spec["N"]))


def _decode_steps(model, prompts, N: int) -> dict:
    """What one KV-cached decoding step costs and reads: the prompt's prefill time, the
    median time of the N - 1 one-token steps after it, and the bytes a step must read
    (the decoder's weights, the output table, the cached keys and values at the middle
    step), so the report can set the step beside the memory-bandwidth floor."""
    import numpy as np
    from ..models.decoding import decoder_parts, step_weight_bytes
    from ..models.generate import as_sequences, make_stepper
    spec, _ = decoder_parts(model)
    weights = step_weight_bytes(model)
    t0 = time.perf_counter()
    stepper = make_stepper(model, as_sequences(prompts, None, spec.cfg.vocab_size, "bench"), True)
    logits = stepper.first()
    prefill = time.perf_counter() - t0
    steps, cache_bytes = [], 0
    for t in range(N - 1):
        tokens = np.argmax(logits, axis=-1)
        t0 = time.perf_counter()
        logits = stepper.advance(tokens)
        steps.append(time.perf_counter() - t0)
        if t == N // 2:
            kv = stepper.cache.kv + (stepper.cache.memory_kv or [])
            cache_bytes = sum(a.nbytes for pair in kv if pair is not None for a in pair)
    return {"prefill": prefill, "decode_step": statistics.median(steps) if steps else None,
            "step_bytes": weights + cache_bytes}


def _generate_torch(spec: dict) -> dict:
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        model, tmodel = _torch_setup(spec["preset"], spec["arch"], tmp)
    tmodel.eval()
    prompts = torch.from_numpy(_prompts(model.config, spec["arch"], spec["b"], spec["P"]))
    N = spec["N"]
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0,
              attention_mask=torch.ones_like(prompts))
    if spec["arch"] == "encdec":
        kw["decoder_start_token_id"] = model.config.decoder.bos_token_id

    def gen(n):
        with torch.no_grad():
            return tmodel.generate(prompts, max_new_tokens=n, min_new_tokens=n, **kw)

    gen(2)
    rss0 = _rss_mib()
    out = {}
    times = _timed(lambda: out.update(seq=gen(N)), spec["repeats"])
    seq = out["seq"]
    new = seq[:, prompts.shape[1]:] if spec["arch"] == "decoder" else seq[:, 1:]
    return {"times": times, "new_tokens": int(new.shape[1]), "peak_rss": _peak_rss_mib(),
            "step_mem": _peak_rss_mib() - rss0, "tokens": new[:, :16].tolist()}


def _startup(spec: dict) -> dict:
    """Import mini_encdec and run one numba training step on tiny (timed from process
    start, which the parent measures)."""
    t0 = time.perf_counter()
    from ..backend import set_backend
    set_backend("numba")
    model = _model("tiny", "decoder")
    batch = _batch(model.config, "decoder", 2, 16)
    model.loss_and_grads(batch)
    return {"in_process": time.perf_counter() - t0}


def _bandwidth(spec: dict) -> dict:
    """Bytes/s that a matrix-vector product streams from memory: a float32 matrix of 256
    MiB, far larger than any cache (what a decoding step does with weights that do not
    stay cached); best of 5, on one thread and on the thread policy's cap."""
    import numpy as np
    from ..kernels import threads
    A = np.ones((2 ** 28 // (4 * 4096), 4096), dtype=np.float32)
    x = np.ones(4096, dtype=np.float32)
    with threads.serial():
        one = A.nbytes / min(_timed(lambda: A @ x, 5))
    threads.set_threads(threads.cap())
    return {"one": one, "all": A.nbytes / min(_timed(lambda: A @ x, 5)),
            "threads": threads.cap()}


_WORKERS = {"train": _train_ours, "train_torch": _train_torch, "generate": _generate_ours,
            "generate_torch": _generate_torch, "startup": _startup, "bandwidth": _bandwidth}


_READY = "@@READY@@"


def _worker_main(argv=None) -> None:
    """Entry point of a measurement process: one JSON spec in, one JSON line out."""
    spec = json.loads((argv or sys.argv)[1])
    result = _WORKERS[spec["kind"]](spec)
    sys.stdout.write("\n@@RESULT@@" + json.dumps(result) + "\n")


def _busy_cpu_seconds():
    """CPU seconds all processes used so far (busy time of /proc/stat, steal included), or
    None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pid: int) -> float:
    """CPU seconds of a running process (all its threads), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _worker_command(spec: dict) -> list:
    code = "from mini_encdec.experiments.bench import _worker_main; _worker_main()"
    return [sys.executable, "-c", code, json.dumps(spec)]


class Competitor:
    """A CPU-bound process for --contended, in its own session (its own scheduling
    autogroup on Linux, like a program started from another terminal): `busy` spins a
    Python loop; `copy` runs the training worker of `spec` until stopped."""

    def __init__(self, kind: str, spec: dict | None = None, env_extra: dict | None = None,
                 timeout: float = 600.0):
        if kind not in LOADS:
            raise ValueError(f"Competitor: expected one of {LOADS}, got {kind!r}")
        env = dict(os.environ)
        env.update(env_extra or {})
        cmd = ([sys.executable, "-c", "while True: pass"] if kind == "busy"
               else _worker_command(dict(spec, loop=True)))
        self.kind = kind
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env, start_new_session=True)
        if kind == "copy":  # wait until it is warm (compiled, first step done)
            if not self._wait_ready(timeout):
                self.stop()
                raise RuntimeError(f"the {kind} competitor did not start training within "
                                   f"{timeout:.0f} s")
        else:
            time.sleep(0.2)  # let it start spinning

    def _wait_ready(self, timeout: float) -> bool:
        import selectors
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    line = self.proc.stdout.readline()
                    if line.strip() == _READY:
                        return True
                    if not line:  # it exited
                        return False
        return False

    def cpu_seconds(self) -> float:
        return _process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """Kill it (its own process group: the process this object started)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _spawn(spec: dict, timeout: float, env_extra: dict = None,
           competitor: Competitor | None = None) -> dict:
    env = dict(os.environ)
    env.update(env_extra or {})
    busy0, comp0 = _busy_cpu_seconds(), competitor.cpu_seconds() if competitor else 0.0
    ru0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(_worker_command(spec), capture_output=True, text=True,
                          timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    ru1 = os.times()
    busy1, comp1 = _busy_cpu_seconds(), competitor.cpu_seconds() if competitor else 0.0
    if proc.returncode != 0 or "@@RESULT@@" not in proc.stdout:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}
    result = json.loads(proc.stdout.rsplit("@@RESULT@@", 1)[1])
    result["wall"] = wall
    if busy0 is not None and busy1 is not None and wall > 0:
        mine = (ru1.children_user + ru1.children_system) - (ru0.children_user + ru0.children_system)
        result["others_cpu"] = max(0.0, (busy1 - busy0 - mine - (comp1 - comp0)) / wall)
        if competitor:
            result["competitor_cpu"] = (comp1 - comp0) / wall
    return result


def _contended(spec: dict, timeout: float, one_thread: bool) -> dict:
    """`spec` measured beside each competitor (the copy runs the same spec), and for
    numba also with one thread (the copy too)."""
    out = {}
    settings = [("", {})] + ([("/1", {"MINI_ENCDEC_THREADS": "1"})] if one_thread else [])
    for load in LOADS:
        for suffix, env in settings:
            try:
                with Competitor(load, spec, env, timeout) as comp:
                    out[load + suffix] = _spawn(spec, timeout, env, comp)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                out[load + suffix] = {"error": str(e)}
    return out


# --- the parent: machine facts, matmul peak, orchestration, the table ----------------------------

def matmul_peak(n: int = 2048, repeats: int = 7) -> float:
    """float32 matmul FLOP/s of this machine: the best of `repeats` (n, n) @ (n, n)."""
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up (BLAS threads start)
    best = min(_timed(lambda: a @ b, repeats))
    return 2.0 * n ** 3 / best


def _have_torch() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def machine_description() -> dict:
    import numpy as np
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) / 2**20
    except OSError:
        mem = float("nan")
    blas = "?"
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{deps.get('name', '?')} {deps.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 (the BLAS name is informative only)
        pass
    import numba
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "python": platform.python_version(), "numpy": np.__version__, "blas": blas,
            "numba": numba.__version__, "load_average": os.getloadavg()}
    if _have_torch():
        import importlib.metadata as md
        info["torch"] = md.version("torch")
        info["transformers"] = md.version("transformers")
    return info


def _tok_s(result: dict, tokens: int) -> float:
    return tokens / min(result["times"])


def _fmt(x, spec=".0f") -> str:
    return "n/a" if x is None else format(x, spec)


def run(args) -> int:
    from ..models.flops import train_step_flops
    presets = [p for p in args.presets.split(",") if p]
    archs = [a for a in args.archs.split(",") if a]
    engines = [e for e in args.engines.split(",") if e]
    B, T, steps = args.batch_size, args.seq_len, args.steps
    gen_batches = [int(b) for b in args.gen_batches.split(",") if b]
    P, N, repeats = args.prompt_len, args.new_tokens, args.gen_repeats
    if args.quick:
        presets, archs, steps, gen_batches, N, repeats = ["tiny"], ["decoder"], 2, [1], 8, 1
    for name, values, allowed in (("--presets", presets, None), ("--archs", archs, ARCHS),
                                  ("--engines", engines, ENGINES)):
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad or not values:
            raise ValueError(f"bench: {name}: expected values from {allowed}, got {values}")
    for p in presets:
        _config(p, "decoder")  # a bad preset name fails here with a clear message
    torch_ok = _have_torch()
    if "torch" in engines and not torch_ok:
        engines = [e for e in engines if e != "torch"]
        print("bench: torch or transformers not installed: PyTorch columns skipped",
              file=sys.stderr)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    machine = machine_description()
    log(f"bench: {machine['cpu']}, {machine['cores']} cores; measuring the matmul peak")
    peak = matmul_peak()
    bandwidth = _spawn({"kind": "bandwidth"}, args.timeout)
    train, gen, profiles = {}, {}, {}
    for p in presets:
        for arch in archs:
            cfg = _config(p, arch)
            flops = train_step_flops(cfg, B, T, None if arch == "decoder" else T)
            for eng in engines:
                kind = "train_torch" if eng == "torch" else "train"
                log(f"bench: train {p} {arch} {eng}")
                spec = dict(kind=kind, engine=eng, preset=p, arch=arch, B=B, T=T, steps=steps,
                            profile=bool(args.profile and eng == "numba"))
                r = _spawn(spec, args.timeout)
                r["flops"] = flops
                train[(p, arch, eng)] = r
                if args.contended and "error" not in r:
                    log(f"bench: train {p} {arch} {eng} beside a busy loop and a second copy")
                    r["contended"] = _contended(dict(spec, profile=False), args.timeout,
                                                one_thread=eng == "numba")
                if "profile" in r:
                    profiles[(p, arch)] = r["profile"]
                for b in gen_batches:
                    kind = "generate_torch" if eng == "torch" else "generate"
                    log(f"bench: generate {p} {arch} {eng} batch {b}")
                    spec = dict(kind=kind, engine=eng, preset=p, arch=arch, b=b, P=P, N=N,
                                repeats=repeats)
                    gen[(p, arch, eng, b)] = _spawn(spec, args.timeout)
    startup = None
    if not args.no_startup:
        log("bench: cold and warm start")
        with tempfile.TemporaryDirectory() as cache:
            env = {"NUMBA_CACHE_DIR": cache}
            startup = [_spawn({"kind": "startup"}, args.timeout, env) for _ in range(2)]

    md = render(machine, peak, dict(B=B, T=T, steps=steps, P=P, N=N), presets, archs, engines,
                gen_batches, train, gen, startup, profiles, contended=args.contended,
                bandwidth=bandwidth)
    print(md)
    out = Path(args.out) if args.out else \
        Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}" / "bench.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    raw = {"machine": machine, "matmul_peak": peak, "bandwidth": bandwidth,
           "train": {"/".join(k): v for k, v in train.items()},
           "generate": {"/".join(map(str, k)): v for k, v in gen.items()},
           "startup": startup}
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"bench: wrote {out} (and {out.with_suffix('.json').name})")
    return 0


def _ok(r) -> bool:
    return r is not None and "error" not in r


def _slowdown(r: dict, key: str):
    """Median step beside load `key` (e.g. "busy", "copy/1") over the quiet median."""
    c = (r.get("contended") or {}).get(key)
    if not (_ok(r) and _ok(c)):
        return None
    return statistics.median(c["times"]) / statistics.median(r["times"])


def _contended_cell(r: dict, load: str, engine: str) -> str:
    c = (r.get("contended") or {}).get(load)
    if c is None:
        return ""
    if "error" in c:
        return f"error: {c['error'][:60]}"
    cell = f"{statistics.median(c['times']) * 1e3:.0f} ({_slowdown(r, load):.2f}x"
    one = _slowdown(r, load + "/1")
    if engine == "numba" and one is not None:
        cell += f"; 1 thread {one:.2f}x"
    return cell + ")"


def _decode_limits(presets, archs, gen_batches, gen, bandwidth) -> list:
    """The numba decoding step beside the memory-bandwidth floor: the bytes it must read
    (weights, output table, KV cache) over the bandwidth this machine streams them at."""
    rows = [(p, a, b, gen.get((p, a, "numba", b))) for p in presets for a in archs
            for b in gen_batches]
    rows = [(p, a, b, r) for p, a, b, r in rows if _ok(r) and r.get("decode_step")]
    if not rows or not _ok(bandwidth):
        return []
    one, many, n = bandwidth["one"], bandwidth["all"], bandwidth["threads"]
    L = ["", "### What limits a decoding step (numba)", "",
         f"Memory bandwidth (a 256 MiB float32 matrix-vector product): {one / 1e9:.1f} GB/s "
         f"on one thread, {many / 1e9:.1f} GB/s on {n}. A step must read the decoder's "
         "weights, the output table and the KV cache; when they do not fit in the cache "
         "together (L3 here: see lscpu) every step streams them from memory, and "
         "bytes / bandwidth is a floor no kernel can beat at float32. 'share of floor' = "
         "floor (one thread) / measured step: near 100% means bandwidth-bound.", "",
         "| preset | model | batch | prefill ms | decode step ms | MB read per step "
         "| floor ms (1 thread / all) | share of floor |",
         "|---|---|---|---|---|---|---|---|"]
    for p, a, b, r in rows:
        mb, step = r["step_bytes"] / 1e6, r["decode_step"]
        f1, fa = r["step_bytes"] / one, r["step_bytes"] / many
        L.append(f"| {p} | {a} | {b} | {1e3 * r['prefill']:.1f} | {1e3 * step:.2f} "
                 f"| {mb:.1f} | {1e3 * f1:.2f} / {1e3 * fa:.2f} | {100 * f1 / step:.0f}% |")
    return L


def _targets(presets, archs, gen_batches, train, gen, B, T, peak) -> list:
    """The targets (TRAIN_VS_TORCH, PEAK_SHARE, GEN_VS_TORCH, NO_CLIFF), each marked met /
    missed; a target whose measurements are missing is left out."""
    def ok(r):
        return r is not None and "error" not in r

    def verdict(met: bool) -> str:
        return "met" if met else "missed"

    lines = ["", "## Targets", ""]
    for p in presets:
        for a in archs:
            ours, ref = train.get((p, a, "numba")), train.get((p, a, "torch"))
            if ok(ours) and ok(ref):
                x = min(ref["times"]) / min(ours["times"])
                lines.append(f"- training tokens/s >= {TRAIN_VS_TORCH}x PyTorch's, {p} {a}: "
                             f"{x:.2f}x ({verdict(x >= TRAIN_VS_TORCH)})")
    for a in archs:
        ours = train.get(("small", a, "numba"))
        if ok(ours):
            frac = ours["flops"] / min(ours["times"]) / peak
            lines.append(f"- >= {100 * PEAK_SHARE:.0f}% of the matmul peak on small {a}: "
                         f"{100 * frac:.0f}% ({verdict(frac >= PEAK_SHARE)})")
    for b in gen_batches:
        want = GEN_VS_TORCH.get(b)
        for p in presets:
            for a in archs:
                ours, ref = gen.get((p, a, "numba", b)), gen.get((p, a, "torch", b))
                if want and ok(ours) and ok(ref):
                    x = (ours["new_tokens"] / min(ours["times"])) / \
                        (ref["new_tokens"] / min(ref["times"]))
                    lines.append(f"- KV-cached generation >= {want}x transformers generate, "
                                 f"batch {b}, {p} {a}: {x:.1f}x ({verdict(x >= want)})")
    for p in presets:
        for a in archs:
            r = train.get((p, a, "numba"))
            if not (_ok(r) and r.get("contended")):
                continue
            x = {k: _slowdown(r, k) for k in r["contended"]}
            if any(x.get(k) is None for k in LOADS):
                continue
            cliff = max(x[k] for k in LOADS)
            ones = [(x[k], x.get(k + "/1")) for k in LOADS]
            slower = [k for k, (adaptive, one) in zip(LOADS, ones)
                      if one is not None and adaptive > one * (1 + NOISE)]
            lines.append(
                f"- no cliff, {p} {a}: beside a busy loop {x['busy']:.2f}x, beside a second "
                f"copy {x['copy']:.2f}x the quiet median step (<= {NO_CLIFF}x: "
                f"{'met' if cliff <= NO_CLIFF else 'missed'})"
                + ("" if any(one is None for _, one in ones) else
                   f"; one thread under the same loads {ones[0][1]:.2f}x, {ones[1][1]:.2f}x "
                   f"(not slower than one thread, within {100 * NOISE:.0f}%: "
                   f"{'met' if not slower else 'missed beside the ' + ', '.join(slower)})"))
    lines.append("- attention extra memory O(B*H*T*Dh): by construction (online softmax, "
                 "recomputing backward; tests/test_kernels.py checks the cache holds no "
                 "(Tq, Tk) array)")
    return lines


def render(machine, peak, shape, presets, archs, engines, gen_batches, train, gen, startup,
           profiles, contended: bool = False, bandwidth: dict | None = None) -> str:
    """The markdown report."""
    B, T = shape["B"], shape["T"]
    L = [f"# mini_encdec benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "",
         f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
         f"Python {machine['python']}, NumPy {machine['numpy']} ({machine['blas']}), "
         f"Numba {machine['numba']}"
         + (f", torch {machine['torch']}, transformers {machine['transformers']}"
            if "torch" in machine else "")
         + f". Load average at start: {', '.join(f'{x:.2f}' for x in machine['load_average'])}.",
         ""]
    policy = next((r["threads"] for r in train.values() if _ok(r) and "threads" in r), None)
    if policy:
        L += [f"Threads (numba engine, mini_encdec/kernels/threads.py): "
              f"MINI_ENCDEC_THREADS={policy['setting']}, cap {policy['cap']} of "
              f"{policy['cpus']} CPUs, "
              + ("adapting to the load" if policy["adaptive"] else "fixed")
              + f"; Numba layer {policy['numba']}; BLAS {policy['blas']}; "
              f"OMP_WAIT_POLICY={policy['omp_wait_policy']}"
              + (f". Allocator (kernels/allocator.py, MINI_ENCDEC_MALLOC): "
                 f"{policy['allocator']}" if "allocator" in policy else "") + ".", ""]
    others = [r["others_cpu"] for r in list(train.values()) + list(gen.values())
              if _ok(r) and "others_cpu" in r]
    if others:
        L += [f"Other processes' CPU use during the quiet measurements: mean "
              f"{statistics.mean(others):.2f}, max {max(others):.2f} CPUs (0 = a quiet "
              f"machine).", ""]
    L += [f"float32 matmul peak (best 2048^3 `np.matmul`): **{peak / 1e9:.1f} GFLOP/s**.", "",
          f"## Training step (forward + backward + AdamW), B={B}, T={T}"
          + " (encoder-decoder: T encoder + T decoder tokens)", "",
          "tokens/s counts the T (decoder) target tokens per row; GFLOP/s from the matmul "
          "FLOPs of mini_encdec.models.flops (masked attention pairs not counted); "
          f"best of {shape['steps']} steps (median in brackets); memory = peak RSS of the "
          "measuring process / growth during the steps."]
    extra_cols = ""
    if contended:
        L[-1] += (" Contended: the median step while a busy-loop process / a second copy of "
                  "the same training runs (each in its own session), and its ratio to the "
                  "quiet median; for numba also the ratio with one thread "
                  "(MINI_ENCDEC_THREADS=1) under the same load.")
        extra_cols = " busy loop ms (x quiet) | 2nd copy ms (x quiet) |"
    L += ["", "| preset | model | engine | step ms | tokens/s | GFLOP/s | % of peak | vs torch "
          "| peak RSS MiB | step MiB |" + extra_cols,
          "|---|---|---|---|---|---|---|---|---|---|" + "---|" * (2 if contended else 0)]
    for p in presets:
        for a in archs:
            ref = train.get((p, a, "torch"))
            ref_tps = _tok_s(ref, B * T) if ref and "error" not in ref else None
            for e in engines:
                r = train.get((p, a, e))
                if r is None:
                    continue
                if "error" in r:
                    L.append(f"| {p} | {a} | {e} | error: {r['error'][:80]} | | | | | | |"
                             + " |" * (2 if contended else 0))
                    continue
                best, med = min(r["times"]), statistics.median(r["times"])
                tps = B * T / best
                gfs = r["flops"] / best / 1e9
                ratio = f"{tps / ref_tps:.2f}x" if ref_tps and e != "torch" else ""
                L.append(f"| {p} | {a} | {e} | {best * 1e3:.0f} ({med * 1e3:.0f}) | {tps:.0f} "
                         f"| {gfs:.1f} | {100 * gfs * 1e9 / peak:.0f}% | {ratio} "
                         f"| {r['peak_rss']:.0f} | {r['step_mem']:.0f} |"
                         + "".join(f" {_contended_cell(r, k, e)} |"
                                   for k in (LOADS if contended else ())))
    L += ["", f"## Generation (greedy, KV cache), {shape['N']} new tokens after a "
              f"{shape['P']}-token prompt", "",
          "tokens/s = batch * new tokens / wall time of the whole `generate` call (prompt "
          "processing included), best of the timed calls; 'same tokens' compares the first "
          "16 generated tokens with PyTorch's (an encoder-decoder may differ when the prompt "
          "is longer than the sliding window: transformers >= 5 lets T5Gemma's encoder "
          "local layers see |q - k| <= W, SPEC 2 says < W; see interop.py).", "",
          "| preset | model | engine | batch | tokens/s | vs torch | same tokens | peak RSS MiB |",
          "|---|---|---|---|---|---|---|---|"]
    for p in presets:
        for a in archs:
            for b in gen_batches:
                ref = gen.get((p, a, "torch", b))
                ok_ref = ref is not None and "error" not in ref
                for e in engines:
                    r = gen.get((p, a, e, b))
                    if r is None:
                        continue
                    if "error" in r:
                        L.append(f"| {p} | {a} | {e} | {b} | error: {r['error'][:80]} | | | |")
                        continue
                    tps = b * r["new_tokens"] / min(r["times"])
                    ratio = same = ""
                    if ok_ref and e != "torch":
                        ratio = f"{tps / (b * ref['new_tokens'] / min(ref['times'])):.2f}x"
                        same = "yes" if r["tokens"] == ref["tokens"] else "no"
                    L.append(f"| {p} | {a} | {e} | {b} | {tps:.0f} | {ratio} | {same} "
                             f"| {r['peak_rss']:.0f} |")
    L += _decode_limits(presets, archs, gen_batches, gen, bandwidth)
    L += _targets(presets, archs, gen_batches, train, gen, B, T, peak)
    if startup:
        L += ["", "## Start-up (fresh process: import + build tiny + one numba training step)",
              "", "| | wall s | in-process s |", "|---|---|---|"]
        for label, r in zip(("cold (empty compile cache)", "warm (cache on disk)"), startup):
            if "error" in r:
                L.append(f"| {label} | error: {r['error'][:80]} | |")
            else:
                L.append(f"| {label} | {r['wall']:.1f} | {r['in_process']:.1f} |")
    if profiles:
        L += ["", "## Profile of one numba training step (top functions by own time)", ""]
        for (p, a), rows in profiles.items():
            L += [f"{p} {a}:", "", "| function | calls | s | share |", "|---|---|---|---|"]
            L += [f"| {f} | {n} | {s:.4f} | {100 * sh:.0f}% |" for f, n, s, sh in rows]
            L.append("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":  # pragma: no cover - `python -m mini_encdec bench` is the entry
    import argparse
    ap = argparse.ArgumentParser(prog="python -m mini_encdec.experiments.bench")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
