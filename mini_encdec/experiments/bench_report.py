"""The report of `python -m mini_encdec bench`: the markdown tables and the targets.

    md = render(machine, peak, shape, presets, archs, engines, gen_batches, train, gen,
                startup, profiles, contended=False, bandwidth=None)

`train`, `gen` and the rest are the results the workers (bench_workers.py) printed, keyed
by (preset, arch, engine) and (preset, arch, engine, batch); a result with an "error" entry
becomes an error row. Each target (TRAIN_VS_TORCH, PEAK_SHARE, GEN_VS_TORCH, NO_CLIFF) is
marked met or missed; one whose measurements are missing is left out.
"""

from __future__ import annotations

import statistics
import time

LOADS = ("busy", "copy")  # --contended: a busy-loop process; a second copy of the training
NO_CLIFF = 2.5  # the target: a contended step takes at most this many quiet steps
TRAIN_VS_TORCH = 1.3  # the target: training tokens/s at least this many times PyTorch's
PEAK_SHARE = 0.7  # the target on `small`: this share of the measured matmul peak
GEN_VS_TORCH = {1: 5, 8: 3}  # batch -> the target generation speed-up over transformers
NOISE = 0.05  # "not slower than one thread" allows the run-to-run noise of a median step


def _engine_cell(e: str, r: dict) -> str:
    """The engine's name; for torch_compile with its compile time."""
    return f"{e} (compile {r['compile_seconds']:.0f} s)" if "compile_seconds" in r else e


def _tok_s(result: dict, tokens: int) -> float:
    return tokens / min(result["times"])


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
         "weights, the output table and the KV cache (MB read per step: "
         "models/flops.py decode_step_bytes, at the middle step); when they do not fit in "
         "the cache together (L3 here: see lscpu) every step streams them from memory, and "
         "bytes / bandwidth is a floor no kernel can beat at float32 (data that stays in "
         "the cache can beat it). 'share of floor' = floor (one thread) / measured step: "
         "near 100% means bandwidth-bound; 'step / floor' is the same ratio the other way "
         "up, the step as a % of the floor. CPU ms: the median step's process CPU time "
         "(all threads), 'matmuls' the CPU time of the same step's matrix products alone "
         "(every weight matrix times the batch's rows, back to back), 'rest' the share of "
         "the step that is neither: attention, norms, soft-cap and the Python between the "
         "kernels.", "",
         "| preset | model | batch | prefill ms | decode step ms | MB read per step "
         "| floor ms (1 thread / all) | share of floor | step / floor | step CPU ms "
         "| matmuls CPU ms | rest |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p, a, b, r in rows:
        mb, step = r["step_bytes"] / 1e6, r["decode_step"]
        f1, fa = r["step_bytes"] / one, r["step_bytes"] / many
        cpu, mm = r.get("decode_step_cpu"), r.get("matmuls_cpu")
        split = (f"{1e3 * cpu:.2f} | {1e3 * mm:.2f} | {100 * (1 - mm / cpu):.0f}%"
                 if cpu and mm is not None else " | ")
        L.append(f"| {p} | {a} | {b} | {1e3 * r['prefill']:.1f} | {1e3 * step:.2f} "
                 f"| {mb:.1f} | {1e3 * f1:.2f} / {1e3 * fa:.2f} | {100 * f1 / step:.0f}% "
                 f"| {100 * step / f1:.0f}% | {split} |")
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
            comp = train.get((p, a, "torch_compile"))
            if ok(ours) and ok(comp):
                x = min(comp["times"]) / min(ours["times"])
                lines.append(f"- (no target) training tokens/s over PyTorch with torch.compile, "
                             f"{p} {a}: {x:.2f}x")
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
          "measuring process / growth during the steps; 'vs torch' = tokens/s over PyTorch "
          "eager's (for torch_compile: what compiling gains over eager; its compile time, "
          "the first step less the best, beside its name)."]
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
                L.append(f"| {p} | {a} | {_engine_cell(e, r)} | {best * 1e3:.0f} ({med * 1e3:.0f}) "
                         f"| {tps:.0f} "
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
          "local layers see |q - k| <= W, SPEC 2 says < W; see storage/hf_config.py).", "",
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
                    L.append(f"| {p} | {a} | {_engine_cell(e, r)} | {b} | {tps:.0f} | {ratio} "
                             f"| {same} "
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
