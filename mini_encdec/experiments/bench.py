"""Speed benchmark: `python -m mini_encdec bench [--out FILE] [--quick] ...`.

In one run, for the presets tiny and small, decoder-only (Gemma 2) and encoder-decoder
(T5Gemma), it measures:
  - training-step tokens/s (forward, backward and the AdamW update of mini_encdec.training.optim)
    for the numpy and numba backends, and for PyTorch (`Gemma2ForCausalLM` /
    `T5GemmaForConditionalGeneration` from transformers, eager attention, torch AdamW,
    the same weights and batch shapes) when torch and transformers are installed, eager
    and compiled by torch.compile (engine torch_compile, with its compile time);
  - the achieved FLOP/s (matmul FLOPs from mini_encdec.models.flops, masked attention
    pairs not counted) as a fraction of this machine's float32 matmul peak, measured in the
    same run by timing a large `np.matmul`;
  - KV-cached greedy generation tokens/s at batch 1 and 8 (64 new tokens after a
    128-token prompt), against `transformers` `generate` (eager, and compiled with a
    static cache);
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

This module is the command: the arguments, the worker processes (started, timed, and for
--contended a competitor beside them), the machine facts and the matmul peak. The
measurements run in bench_workers.py (start-up: bench_startup.py), the tables and targets
come from bench_report.py.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..config import encdec_preset, preset
from ..models.flops import train_step_flops
from .bench_report import LOADS, render

HELP = "benchmark tokens/s and matmul-peak fraction (and PyTorch when installed)"  # in --help
PRESETS = ("tiny", "small")
ARCHS = ("decoder", "encdec")
ENGINES = ("numpy", "numba", "torch", "torch_compile")
TORCH_ENGINES = ("torch", "torch_compile")  # need torch and transformers
READY = "@@READY@@"  # the line a --contended copy prints once warm (Competitor waits for it)


def add_arguments(p) -> None:
    p.add_argument("--presets", default=",".join(PRESETS),
                   help="comma-separated presets (default tiny,small)")
    p.add_argument("--archs", default=",".join(ARCHS),
                   help="comma-separated: decoder (Gemma 2) and/or encdec (T5Gemma)")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help="comma-separated: numpy, numba, torch (PyTorch eager), torch_compile "
                        "(PyTorch with torch.compile, inductor; its compile time is reported); "
                        "the PyTorch engines are skipped when torch or transformers is missing")
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
    p.add_argument("--study-profile", action="store_true",
                   help="only the study's tiny training steps (enc-dec PrefixLM 64+64 and "
                        "decoder-only 128, batch 16) on one thread: ms/step, share of the "
                        "one-thread matmul peak, and where the time goes (bench_study.py)")


def bench_config(preset_name: str, arch: str):
    """The preset's GemmaConfig (arch "decoder") or EncDecConfig ("encdec")."""
    return preset(preset_name) if arch == "decoder" else encdec_preset(preset_name)


def timed(fn, repeats: int) -> list:
    """Seconds of each of `repeats` calls of fn() (the workers time with it too)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# --- the worker processes (bench_workers.py; this module imports none of their code) -----------

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
    module = {"startup": "bench_startup", "study": "bench_study"}.get(spec["kind"],
                                                                     "bench_workers")
    code = f"from mini_encdec.experiments.{module} import worker_main; worker_main()"
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
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    line = self.proc.stdout.readline()
                    if line.strip() == READY:
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
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up (BLAS threads start)
    best = min(timed(lambda: a @ b, repeats))
    return 2.0 * n ** 3 / best


def _have_torch() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def machine_description() -> dict:
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
    import numba  # here, not at the top: every command imports this module (cli/__init__.py)
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1),
            "python": platform.python_version(), "numpy": np.__version__, "blas": blas,
            "numba": numba.__version__, "load_average": os.getloadavg()}
    if _have_torch():
        for name in ("torch", "transformers"):
            try:
                info[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:  # importable, no metadata
                info[name] = "?"
    return info


def _write(md: str, raw: dict, out) -> None:
    """The markdown to stdout and to `out` (default runs/bench-<time>/bench.md), the raw
    results beside it as .json."""
    print(md)
    out = Path(out) if out else \
        Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}" / "bench.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    print(f"bench: wrote {out} (and {out.with_suffix('.json').name})", file=sys.stderr,
          flush=True)


def study_profile(args) -> int:
    """--study-profile: the study's steps in one fresh one-thread process (bench_study.py)."""
    from .bench_study import ONE_THREAD, render as render_study
    machine = machine_description()
    print("bench: the study's tiny steps on one thread", file=sys.stderr, flush=True)
    r = _spawn({"kind": "study", "steps": args.steps, "profile_steps": 3}, args.timeout,
               ONE_THREAD)
    if "error" in r:
        raise RuntimeError(f"bench --study-profile: the worker failed: {r['error']}")
    _write(render_study(r, machine), {"machine": machine, "study_profile": r}, args.out)
    return 0


def run(args) -> int:
    if getattr(args, "study_profile", False):
        return study_profile(args)
    presets = [p for p in args.presets.split(",") if p]
    archs = [a for a in args.archs.split(",") if a]
    engines = [e for e in args.engines.split(",") if e]
    B, T, steps = args.batch_size, args.seq_len, args.steps
    gen_batches = [int(b) for b in args.gen_batches.split(",") if b]
    P, N, repeats = args.prompt_len, args.new_tokens, args.gen_repeats
    if args.quick:
        presets, archs, steps, gen_batches, N, repeats = ["tiny"], ["decoder"], 2, [1], 8, 1
        if args.engines == ",".join(ENGINES):  # a smoke run does not wait for compiling
            engines = [e for e in engines if e != "torch_compile"]
    for name, values, allowed in (("--presets", presets, None), ("--archs", archs, ARCHS),
                                  ("--engines", engines, ENGINES)):
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad or not values:
            raise ValueError(f"bench: {name}: expected values from {allowed}, got {values}")
    for p in presets:
        bench_config(p, "decoder")  # a bad preset name fails here with a clear message
    torch_ok = _have_torch()
    if any(e in TORCH_ENGINES for e in engines) and not torch_ok:
        engines = [e for e in engines if e not in TORCH_ENGINES]
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
            cfg = bench_config(p, arch)
            flops = train_step_flops(cfg, B, T, None if arch == "decoder" else T)
            for eng in engines:
                kind = "train_torch" if eng in TORCH_ENGINES else "train"
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
                    kind = "generate_torch" if eng in TORCH_ENGINES else "generate"
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
    raw = {"machine": machine, "matmul_peak": peak, "bandwidth": bandwidth,
           "train": {"/".join(k): v for k, v in train.items()},
           "generate": {"/".join(map(str, k)): v for k, v in gen.items()},
           "startup": startup}
    _write(md, raw, args.out)
    return 0



if __name__ == "__main__":  # pragma: no cover - `python -m mini_encdec bench` is the entry
    import argparse
    ap = argparse.ArgumentParser(prog="python -m mini_encdec.experiments.bench")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
