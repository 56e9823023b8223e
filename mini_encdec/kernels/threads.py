"""How many threads the numba backend uses, and when: one policy for BLAS and Numba.

Why a policy. A numba training step alternates between two thread pools: BLAS's (NumPy's
OpenBLAS, its own pthreads, under every matmul) and Numba's (the kernels' `prange`, the
OpenMP layer here). Each splits a call into one fixed piece per thread and waits at the
end for the slowest piece; a step makes thousands of such calls (the linear layers and
the attention's per-head matmuls). On a quiet machine that is what makes training fast.
When another program keeps a core busy, the thread that shares its core is a scheduler
time slice (milliseconds) late at every call, while its partner spins waiting for it:
a fixed two threads made a step many times slower beside a busy loop, one thread only a
little (the numbers: MEASUREMENTS.md beside this file). So the number of threads follows
the CPUs that are actually free:

- cap: the CPUs this process may run on (`os.sched_getaffinity`, a cgroup CPU quota),
  and no more than Numba's pool (NUMBA_NUM_THREADS). Fixed for the process.
- current: 1 until the first measurement, then the cap minus the CPUs that other
  processes kept busy over the last quarter second (Linux: the busy time of our CPUs in /proc/stat minus this process's own CPU
  time), at least 1. It drops as soon as another process takes more than ~0.3 of a CPU
  and comes back when the others use less than ~0.15 of a CPU (the gap keeps it from
  flapping). Without /proc/stat (macOS, Windows) current is the cap.
- when: `current()` is asked at every kernel launch that is big enough for the pool
  (`_runtime.parallel_chunks`) and re-measures at most every 50 ms (reading /proc/stat:
  ~30 us); a change is applied to both pools at once: `numba.set_num_threads` (for the
  calling thread) and BLAS's own setter (through threadpoolctl). At one thread the
  kernels' parallel loops run on the calling thread and nothing waits for anyone.
- results never depend on the load: the kernels cut their work into chunks counted from
  the cap, not from the current count, and every chunk is computed the same way whichever
  thread runs it. BLAS is another matter: OpenBLAS cuts a product into per-thread shares
  whose boundaries move with the count, and some of its kernels round differently by
  share: its Haswell and Zen kernels (AMD EPYC, older Intel CPUs) nearly every float32
  product, its SkylakeX kernels the long sums of weight gradients (B*T = 2032 rows, not
  2048). `start()` checks this once (`blas_varies`: a few float32 products of the shapes
  training uses, on 1, 2 and cap threads, a few ms); where the bits differ, BLAS stays at one
  thread for the whole process (`blas_fixed`) and only Numba's pool follows the load. That
  costs a quiet machine some speed with those kernels (MEASUREMENTS.md), and buys results
  that are the same on any load (tests/test_threads.py runs the check under OpenBLAS's
  Haswell kernels too). MINI_ENCDEC_THREADS=N fixes both pools at N instead (results then
  are those of N threads). Only the cap (the machine, or MINI_ENCDEC_THREADS) and the
  BLAS kernels can change the rounding of a sum. Float64 (used through the Python API for
  gradient checks, never by the command line) is checked and reported by `describe()`, not
  fixed: OpenBLAS's float64 kernels vary with the count on most CPUs, and pinning BLAS for
  them would slow every float32 run.
- waiting: with OMP_WAIT_POLICY=PASSIVE idle OpenMP threads sleep instead of spinning
  (spinning, they steal the cores from the BLAS threads of the next matmul). It is an
  environment variable, inherited by child processes, so the library never sets it on its
  own: `set_wait_policy()` does, when the process opts in (`mini_encdec.ops.
  tune_process()`, which the command line calls first). OpenBLAS's threads spin a while
  after each call whatever we do; at one thread they have nothing to wait for.
- decoding steps: `step_threads(rows, weight_bytes)` runs a small KV-cached step
  (fewer than SERIAL_ROWS rows, weights that stay in the CPU's cache) on one thread:
  too little work to split, and on a busy machine a second thread makes every matmul
  wait for it. A bigger step re-measures the load first and uses the threads allowed:
  more rows are more arithmetic, and weights that do not fit in the cache stream from
  memory, where a second thread adds bandwidth.

What the package sets, and how to override it (read when `mini_encdec.kernels` is first
imported; nothing happens with the numpy backend, which does not import the kernels):

- OMP_WAIT_POLICY=PASSIVE, unless already set, only after `tune_process()` (see above).
- MINI_ENCDEC_THREADS: `auto` (default) the adaptive count above; a number N: exactly N
  threads for both pools, never adapted (MINI_ENCDEC_THREADS=1 is the old single-thread
  setting); `set_threads(n or "auto")` changes it at run time.
- A pool whose own variable is set is left alone: NUMBA_NUM_THREADS for Numba;
  OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS,
  BLIS_NUM_THREADS or VECLIB_MAXIMUM_THREADS for BLAS.
- A count changed from outside (`numba.set_num_threads`, `threadpoolctl`) is respected:
  the policy only changes a pool whose count is still the one it set itself.

`describe()` says what is in force (the benchmark prints it).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import sys

import numba
import numpy as np

ENV = "MINI_ENCDEC_THREADS"
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
NUMBA_ENV = "NUMBA_NUM_THREADS"

INTERVAL = 0.05  # seconds between two load measurements
WINDOW = 0.25  # seconds of history one measurement covers
DOWN = 0.3  # drop a thread when the free CPUs fall below current - 1 + (1 - DOWN)
UP = 0.15  # add one when the others use less than this many CPUs beyond current's room
SERIAL_ROWS = 4  # a decoding step with fewer rows than this may run on one thread...
SERIAL_BYTES = 16 << 20  # ...when the weights it reads are fewer bytes than this
WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")  # set by set_wait_policy(), on opt-in only


def _parse(value: str | None):
    """MINI_ENCDEC_THREADS -> "auto" or a positive int."""
    text = (value or "auto").strip().lower()
    if text in ("", "auto"):
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ENV}: expected 'auto' or a whole number >= 1, got {value!r}")
    return n


def _cgroup_cpus() -> float:
    """The CPU quota of this process's cgroup (v2 cpu.max or v1 cfs quota), inf if none."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return math.inf
    paths = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(","):
            paths[c] = path
    candidates = [(f"/sys/fs/cgroup{paths.get('', '/')}".rstrip("/") + "/cpu.max", None)]
    for root in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
        base = root + paths.get("cpu", "/").rstrip("/")
        candidates.append((base + "/cpu.cfs_quota_us", base + "/cpu.cfs_period_us"))
    for quota_file, period_file in candidates:
        try:
            with open(quota_file) as f:
                fields = f.read().split()
            if period_file is None:
                quota, period = fields[0], fields[1]
            else:
                with open(period_file) as f:
                    quota, period = fields[0], f.read().split()[0]
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1"):
            return math.inf
        try:
            return max(1.0, int(quota) / int(period))
        except (ValueError, ZeroDivisionError):
            return math.inf
    return math.inf


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    return max(1, min(n, math.ceil(quota)) if quota != math.inf else n)


class LoadMeter:
    """CPUs kept busy by other processes (and the hypervisor's steal) over the last WINDOW
    seconds: the busy time of this process's CPUs in /proc/stat minus its own CPU time."""

    def __init__(self, cpus=None, stat_path: str = "/proc/stat", own_cpu=time.process_time):
        try:
            cpus = cpus if cpus is not None else os.sched_getaffinity(0)
        except AttributeError:
            cpus = ()
        self._names = {f"cpu{c}" for c in cpus}
        self._path = stat_path
        self._own_cpu = own_cpu
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.works = bool(self._names) and self._read() is not None
        self._history = []  # (monotonic s, busy s of our CPUs, own CPU s)
        self.others = 0.0

    def _read(self):
        try:
            with open(self._path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        busy = 0
        for line in data.split(b"\n")[1:]:
            if not line.startswith(b"cpu"):
                break
            fields = line.split()
            if fields[0].decode() in self._names:
                v = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
                busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        return busy / self._tick

    def sample(self, now: float | None = None) -> float | None:
        """Take a measurement; the others' CPUs over the window, or None while the
        history is shorter than a window's worth (the first 0.1 s)."""
        if not self.works:
            return None
        now = time.monotonic() if now is None else now
        busy = self._read()
        if busy is None:
            return None
        own = self._own_cpu()
        self._history.append((now, busy, own))
        # keep the newest sample that is at least WINDOW old as the base, and the rest
        while len(self._history) > 2 and now - self._history[1][0] >= WINDOW:
            self._history.pop(0)
        t0, busy0, own0 = self._history[0]
        if now - t0 < 0.4 * WINDOW:
            return None
        self.others = max(0.0, ((busy - busy0) - (own - own0)) / (now - t0))
        return self.others


def _choose(current: int, cap: int, cpus: int, others: float) -> int:
    """The new thread count from the current one and the others' load (hysteresis)."""
    free = cpus - others
    down = max(1, min(cap, math.floor(free + DOWN)))
    up = max(1, min(cap, math.floor(free + UP)))
    if down < current:
        return down
    return up if up > current else current


def _import_threadpoolctl():
    """threadpoolctl, imported without the one change its import makes to the process
    environment (it sets KMP_DUPLICATE_LIB_OK, which only Intel's OpenMP reads): the
    library leaves its host's environment alone. A variable set before stays as it was."""
    first = "threadpoolctl" not in sys.modules
    before = os.environ.get("KMP_DUPLICATE_LIB_OK")
    import threadpoolctl
    if first and before is None:
        os.environ.pop("KMP_DUPLICATE_LIB_OK", None)
    return threadpoolctl


class _Blas:
    """BLAS's thread count, through threadpoolctl (OpenBLAS, MKL, BLIS, ...)."""

    def __init__(self):
        try:
            threadpoolctl = _import_threadpoolctl()
            self._libs = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:  # noqa: BLE001 (threadpoolctl missing or unable: BLAS is left alone)
            self._libs = []

    def get(self):
        return self._libs[0].get_num_threads() if self._libs else None

    def set(self, n: int) -> None:
        for lib in self._libs:
            lib.set_num_threads(n)

    def describe(self) -> str:
        return ", ".join(f"{lib.internal_api} {lib.version or ''}".strip()
                         for lib in self._libs) or "not found"


def blas_varies(blas: "_Blas", counts, dtype=np.float32) -> bool:
    """Whether this BLAS gives different bits for the same product of `dtype` on different
    thread counts (a few products of uneven shapes, each big enough to be split, on every
    count in `counts`); BLAS's count is restored afterwards."""
    before = blas.get()
    if before is None:
        return False
    rng = np.random.default_rng(0)
    # activations times weights (uneven row counts), and weight gradients: a long sum over
    # the batch's B*T rows (16 x 127 = 2032 and 8 x 127 = 1016 differ on OpenBLAS's
    # SkylakeX kernels where 2048 does not). Every array stays under 4 MiB, so freeing them
    # does not raise glibc's mmap threshold for the host program's own arrays.
    cases = [(rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype))
             for m, k, n in ((515, 96, 260), (1000, 128, 500), (777, 64, 333),
                             (128, 2032, 128), (128, 1016, 128))]
    try:
        results = []
        for n in counts:
            blas.set(n)
            results.append([a @ b for a, b in cases] + [b.T @ a.T for a, b in cases])
    finally:
        blas.set(before)
    return any(not np.array_equal(x, y) for other in results[1:]
               for x, y in zip(results[0], other))


class Policy:
    """The thread policy of this process (one instance, `POLICY`)."""

    def __init__(self, setting=None, environ=None):
        env = os.environ if environ is None else environ
        self.setting = _parse(env.get(ENV)) if setting is None else _parse(str(setting))
        # an explicit set_threads() manages both pools, whatever the environment says
        self.numba_managed = setting is not None or NUMBA_ENV not in env
        self.blas_managed = setting is not None or not any(k in env for k in BLAS_ENV)
        self.cpus = available_cpus()
        pool = numba.config.NUMBA_NUM_THREADS
        if self.setting == "auto":
            self.cap = max(1, min(self.cpus, pool) if self.numba_managed else pool)
        else:
            self.cap = min(self.setting, pool)
        self._meter = LoadMeter() if self.adaptive else None
        # adaptive: one thread until the first load measurement (0.1 s of history) says
        # more are free, so work that starts on a busy machine never waits for a
        # descheduled thread; a quiet machine loses at most that first 0.1 s
        self._current = 1 if self._meter is not None and self._meter.works else self.cap
        self._blas = None
        self.blas_fixed = None  # BLAS's count for the whole process, if it must not move
        self.float64_varies = False  # float64 products change with BLAS's count (reported)
        self._numba_started = False
        self._applied_numba = self._applied_blas = None
        self._next = 0.0
        self._serial = False

    @property
    def adaptive(self) -> bool:
        return self.setting == "auto" and self.cap > 1

    def start(self) -> None:
        """Set BLAS's count now (the first matmuls may come before any kernel); Numba's is
        set at the first parallel kernel, so importing the kernels does not start its pool."""
        self._blas = _Blas()
        blas = self.setting if self.setting != "auto" else self._current
        if self.blas_managed and self._blas.get() is not None:
            if self.adaptive:
                counts = sorted({1, 2, self.cap})
                # float32: every run of the command line; float64 is reported only
                if blas_varies(self._blas, counts, np.float32):
                    self.blas_fixed = blas = 1  # results must not follow the load
                self.float64_varies = blas_varies(self._blas, counts, np.float64)
            self._blas.set(blas)
            self._applied_blas = self._blas.get()

    def _apply(self, n: int) -> None:
        """Both pools to n threads, except a pool whose count someone else changed."""
        if self.numba_managed and numba.get_num_threads() == self._applied_numba:
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            self._applied_numba = numba.get_num_threads()
        if self.blas_managed and self.blas_fixed is None and self._applied_blas is not None \
                and self._blas.get() == self._applied_blas:
            self._blas.set(n)
            self._applied_blas = self._blas.get()
        self._current = n

    @contextlib.contextmanager
    def serial(self):
        """Both pools at one thread for the block (for pools the policy manages), then
        back to the count before it."""
        before, self._serial = self._current, True
        if before > 1:
            self._apply(1)
        try:
            yield
        finally:
            self._serial = False
            if before > 1:
                self._apply(before)

    def current(self) -> int:
        """Threads for the work starting now (re-measured at most every INTERVAL)."""
        if self._serial:
            return 1
        now = time.monotonic()
        if now < self._next:
            return self._current
        self._next = now + INTERVAL
        if not self._numba_started:
            self._numba_started = True
            if self.numba_managed:
                numba.set_num_threads(min(self._current, numba.config.NUMBA_NUM_THREADS))
                self._applied_numba = numba.get_num_threads()
        if self._meter is not None:
            others = self._meter.sample(now)
            if others is not None:
                n = _choose(self._current, self.cap, self.cpus, others)
                if n != self._current:
                    self._apply(n)
        return self._current

    def describe(self) -> dict:
        meter = self._meter
        return {"setting": self.setting, "cap": self.cap, "current": self._current,
                "cpus": self.cpus, "adaptive": self.adaptive,
                "load_meter": bool(meter and meter.works),
                "numba": (f"{numba.threading_layer() if _layer_started() else 'not started'}"
                          + ("" if self.numba_managed else f", {NUMBA_ENV} set by the user")),
                "blas": (self._blas.describe() if self._blas else "?")
                + ("" if self.blas_managed else ", thread count set by the user")
                + ("" if self.blas_fixed is None else
                   f", fixed at {self.blas_fixed} thread (its bits depend on the count)"),
                "blas_fixed": self.blas_fixed,
                "float64_follows_blas_threads": self.float64_varies and self.blas_fixed is None,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def _layer_started() -> bool:
    try:
        numba.threading_layer()
        return True
    except ValueError:
        return False


POLICY = Policy()
POLICY.start()


def cap() -> int:
    """The most threads the kernels use: chunk counts are derived from it."""
    return POLICY.cap


def current() -> int:
    """The threads to use now (see the module docstring)."""
    return POLICY.current()


def serial():
    """A context manager: the block runs on the calling thread only (BLAS and Numba at one
    thread, unless the user fixed a pool's count), then the count before it is restored.
    For work too small to split, such as one KV-cached decoding step: waking a second
    thread costs more than it saves, and on a busy machine it waits for a descheduled
    thread at every matmul."""
    return POLICY.serial()


def in_serial() -> bool:
    """Whether a `serial()` block is running (a small decoding step: a choice made from its
    rows and weight bytes, never from the load)."""
    return POLICY._serial


def step_threads(rows: int, weight_bytes: int):
    """A context manager for one KV-cached decoding step of `rows` rows reading
    `weight_bytes` of weights: `serial()` for a small step (fewer than SERIAL_ROWS rows
    and weights under SERIAL_BYTES), else the threads the load allows now (re-measured:
    the step's small kernels would not measure it)."""
    if rows < SERIAL_ROWS and weight_bytes < SERIAL_BYTES:
        return serial()
    current()
    return contextlib.nullcontext()


def set_wait_policy() -> None:
    """OMP_WAIT_POLICY=PASSIVE in os.environ unless the user set it (idle OpenMP threads
    then sleep). libgomp reads it when it loads, at Numba's first parallel launch, so this
    must run before that. Called by `mini_encdec.ops.tune_process()` only."""
    os.environ.setdefault(*WAIT_POLICY)


def set_threads(setting) -> None:
    """`"auto"` (the adaptive count) or a number of threads for both pools, from now on
    (this overrides MINI_ENCDEC_THREADS and the pools' own variables)."""
    global POLICY
    POLICY = Policy(setting=setting)
    POLICY.start()


def describe() -> dict:
    """What is in force: setting, cap, current count, the pools and the wait policy."""
    return POLICY.describe()
