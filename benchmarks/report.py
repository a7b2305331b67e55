"""Markdown tables from a results dict (the same text is printed and written next to the JSON)."""

_DIFF_NAMES = {"output": "out", "output1": "indices", "grad_x": "dx", "grad_weight": "dw", "grad_bias": "db",
               "grad_logits": "dlogits"}


def _num(value, digits=2):
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits else f"{value:.1e}"


def _shape(shape):
    return "x".join(str(d) for d in shape)


def _diffs(diffs):
    if not diffs:
        return "-"
    return ", ".join(f"{_DIFF_NAMES.get(k, k)} {v:.0e}" for k, v in diffs.items())


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_lines(results):
    m, s = results["machine"], results["settings"]
    threads = m["threads"]
    lines = [
        f"- Machine: {m['cpu']}, {m['cores']} cores; {m['platform']}; load average "
        f"{m.get('load_average_at_start')} at start, {m.get('load_average_at_end')} at end (other work on the cores "
        f"when well above 0)",
        f"- NumPy {m['numpy']} ({m['numpy_blas']}), PyTorch {m['torch']} ({m['torch_blas']}), "
        f"Python {m['python']}, minigrad {m['minigrad']} at {m['git_commit']}",
        f"- Threads: {threads['threads']} for NumPy's BLAS ({threads['source']}), "
        f"minigrad.set_num_threads({threads.get('minigrad_threads', '-')}) (CPU kernels: "
        f"{threads.get('cpu_kernels', '-')}) and torch.set_num_threads({threads['torch_threads']})",
        f"- Each figure: median of {s['repeats']} (ops; at most 3 when a call takes over "
        f"{s['slow_sample_s']} s) / {s['model_repeats']} (training steps) alternating samples after {s['warmup']} warm-up (fast ops looped so one sample lasts >= {s['min_sample_ms']:.0f} ms); "
        "float32" + (f"; {s['settle_s']} s pause before a sample that follows the other library's "
                     "(idle OpenBLAS threads spin ~0.1 s)" if s["settle_s"] else "")
        + "".join(f"; {k}={v}" for k, v in s["env"].items() if v)
        + ("; --quick: tiny sizes, run once, timings meaningless" if results["quick"] else ""),
    ]
    if "gpu" in m:
        lines.insert(1, f"- GPU: {m['gpu']}; CuPy {m['cupy']} (CUDA runtime {m['cuda_runtime']}), "
                        f"PyTorch CUDA {m['torch_cuda']}, cuDNN {m['cudnn']}; math mode {m['math_mode']}")
    return lines


def ops_table(ops):
    header = ["op", "layer", "shapes", "mode", "minigrad ms", "PyTorch ms", "ratio",
              "minigrad GFLOP/s", "of matmul", "PyTorch GFLOP/s", "GB/s minigrad / PyTorch", "max rel diff"]
    rows = []
    for r in ops["rows"]:
        shapes = "; ".join(f"{k} {_shape(v)}" for k, v in r["shapes"].items())
        if "error" in r:
            rows.append([r["op"], r["layer"], shapes, "-", "ERROR", "", "", "", "", "", "", r["error"][:120]])
            continue
        rows.append([
            r["op"], r["layer"], shapes, r["mode"], _num(r["minigrad_ms"]), _num(r["torch_ms"]),
            f"**{_num(r['ratio'])}**", _num(r.get("minigrad_gflops"), 1),
            _num(r.get("minigrad_of_matmul")), _num(r.get("torch_gflops"), 1),
            f"{_num(r['minigrad_gbps'], 1)} / {_num(r['torch_gbps'], 1)}", _diffs(r["max_rel_diff"]),
        ])
    return _table(header, rows)


def budget_table(rows):
    header = ["layer", "shapes", "im2col budget", "whole column array MB", "minigrad ms (fwd+bwd)", "x unlimited"]
    return _table(header, [[
        r["layer"], "; ".join(f"{k} {_shape(v)}" for k, v in r["shapes"].items()),
        ("no limit" if r["budget_mib"] is None else f"{r['budget_mib']} MiB") + (" (default)" if r["default"] else ""),
        _num(r["column_mib"] * 2 ** 20 / 1e6, 1), _num(r["minigrad_ms"]), f"**{_num(r['vs_unlimited'])}**"]
        for r in rows])


def models_table(models):
    header = ["net", "size", "input", "trainable params", "minigrad ms/step", "PyTorch ms/step", "ratio",
              "minigrad img/s", "PyTorch img/s", "minigrad peak MB", "PyTorch peak MB",
              "loss / grad rel diff (float32)", "grad rel diff float64 (worst parameter)"]
    rows = []
    for r in models["rows"]:
        size = f"{r['size']} (width {r['width']})"
        shape = _shape(r["input"]) if r.get("input") else "-"
        if "error" in r:
            rows.append([r["net"], size, shape, "-", "ERROR", "", "", "", "", "", "", r["error"][:120], ""])
            continue
        mem = r.get("peak_mb", {})
        f64 = r["float64"]
        rows.append([
            r["net"], size, shape, f"{r['params'] / 1e6:.2f} M", _num(r["minigrad_ms"]), _num(r["torch_ms"]),
            f"**{_num(r['ratio'])}**", _num(r["minigrad_img_s"]), _num(r["torch_img_s"]),
            _num(mem.get("minigrad"), 1), _num(mem.get("torch"), 1),
            f"{r['loss_rel_diff']:.0e} / {r['grad_rel_diff']:.0e}",
            f"{f64['grad_rel_diff']:.0e} ({f64['worst_grad_rel_diff']['value']:.0e} {f64['worst_grad_rel_diff']['name']})",
        ])
    return _table(header, rows)


def scaling_table(models):
    """Thread scaling and time to the first step, where the run measured them (CPU)."""
    header = ["net", "minigrad ms, 1 thread / n threads", "minigrad speed-up", "PyTorch ms, 1 thread / n threads",
              "PyTorch speed-up", "ratio, 1 thread", "first step s: minigrad / PyTorch (minigrad, empty numba cache)"]
    rows = []
    for r in models["rows"]:
        if "error" in r or ("scaling" not in r and "first_step_s" not in r):
            continue
        one, first = r.get("one_thread"), r.get("first_step_s") or {}
        cold = first.get("minigrad_cold")
        rows.append([
            r["net"],
            f"{_num(one['minigrad_ms'])} / {_num(r['minigrad_ms'])}" if one else "-",
            f"**{_num(r['scaling']['minigrad'])}**" if one else "-",
            f"{_num(one['torch_ms'])} / {_num(r['torch_ms'])}" if one else "-",
            _num(r["scaling"]["torch"]) if one else "-",
            _num(one["minigrad_ms"] / one["torch_ms"]) if one else "-",
            f"{_num(first.get('minigrad'), 1)} / {_num(first.get('torch'), 1)}"
            + (f" ({_num(cold, 1)})" if cold is not None else ""),
        ])
    return _table(header, rows) if rows else ""


def markdown(results):
    parts = [f"## {results['device'].upper()} benchmarks, {results['date']}"
             + (" (--quick)" if results["quick"] else ""), "", *machine_lines(results), ""]
    if "ops" in results:
        scale = results["ops"]["scale"]
        parts += [f"### Ops (batch {scale['batch']}, maps of a {scale['image']}x{scale['image']} image"
                  + (f", channels / {scale['channel_div']}" if scale["channel_div"] > 1 else "") + ")", "",
                  "ratio = minigrad time / PyTorch time (lower is better for minigrad). "
                  "GFLOP/s counts the convolution's multiply-adds (2 per MAC; backward: input and weight "
                  "gradients); *of matmul* = minigrad GFLOP/s over a float32 matrix product of the im2col "
                  "GEMM shape on the same device (the ceiling of an im2col design). "
                  "GB/s: inputs, outputs (and upstream/input gradients) each moved once. "
                  "max rel diff = max |minigrad - PyTorch| / max |PyTorch|.", "",
                  ops_table(results["ops"]), ""]
        if results["ops"].get("budget"):
            parts += ["#### The im2col memory budget", "",
                      "conv2d forward+backward in minigrad alone, the column array built in tiles of at most "
                      "the budget (`minigrad.functional.conv.set_im2col_budget`) or at once; "
                      "*x unlimited* = time / time without a limit.", "",
                      budget_table(results["ops"]["budget"]), ""]
    if "models" in results:
        parts += ["### Models: one training step (forward, cross-entropy with ignore_index=255, backward, "
                  "SGD momentum 0.9)", "",
                  "img/s = batch / median step time. Differences: one forward+backward from the same weights, "
                  "loss and parameter gradients (max |difference| over the whole net / largest |gradient|), "
                  "in float32 and again in float64 (deep BatchNorm stacks amplify float32 rounding; float64 "
                  "shows whether the two compute the same function).", "",
                  results["models"]["memory_method"], "",
                  models_table(results["models"]), ""]
        scaling = scaling_table(results["models"])
        if scaling:
            parts += ["#### Thread scaling and time to the first step", "",
                      "Each library's step with one thread (`set_num_threads(1)` in both, timed alternately "
                      "right after the n-thread figures); *speed-up* = 1-thread time / n-thread time. "
                      "*first step* = seconds from importing the library to the end of the first training "
                      "step in a fresh process (model built, any compilation or compiled-code cache load "
                      "included); in brackets minigrad's with an empty numba cache (a machine's first run).", "",
                      scaling, ""]
    return "\n".join(parts)
