#!/usr/bin/env python
"""Mutation testing: does the test suite notice one-line bugs put into the code on purpose?

    python tools/mutate.py                     # every mutant, against the committed code (HEAD)
    python tools/mutate.py --list              # the mutants, one a line
    python tools/mutate.py pool_ sgd_nesterov  # only the mutants whose names start with these
    python tools/mutate.py --tree worktree     # the working tree's files as they are now
    python tools/mutate.py --check             # only check that every mutant's line is still there
    python tools/mutate.py --jobs 2 --json mutants.json

Each mutant is one line of one file: the exact original text (stripped of indentation,
optionally searched only inside one function or class) and its replacement. If the
line is not there exactly once the run stops and names the mutant: the code has moved,
update the list below. Every mutant here changes behaviour; the suite should kill all
of them (see the README's testing section for the last score).

The working tree is never touched. The code is copied into a temporary directory
(``git archive HEAD``, or with ``--tree worktree`` the tracked and untracked,
not ignored files as they are on disk), one copy per job; a mutant edits its line in
a copy, runs its test files there with pytest as CI runs it (``CI=true``, so the
hypothesis examples are CI's), with the copy as the working directory and first on
``PYTHONPATH``, and the line is put back. Before the mutants, two checks make sure
the copy is what gets imported and tested rather than an installed (editable)
package: ``minigrad.__file__`` must lie in the copy, and a copy whose
``minigrad/__init__.py`` raises must fail its tests.

First the mutants' test files run on the unmutated copy (the baseline): tests that
fail there already (someone's work in progress) are named and left out for every
mutant. A mutant is *killed* when its tests fail (or crash, or run past
``--timeout``), *survived* when they pass. Exit status: 0 if every mutant was
killed, 1 if one survived, 2 on a setup error (a moved line, a baseline that
cannot even collect its tests).
"""
import argparse
import concurrent.futures
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str          # path relative to the repository root
    original: str      # the line's exact text, without its indentation
    replacement: str   # what the line becomes (the original indentation is kept)
    tests: tuple       # test files (or node ids) that should kill it
    within: str = ""   # search only in the def/class whose header line contains this text


def M(name, file, original, replacement, tests, within=""):
    return Mutant(name, file, original, replacement, tuple(tests.split()), within)


IM2COL, CONV, POOL = "tests/test_im2col.py", "tests/test_conv.py", "tests/test_pooling.py"
LOSS, NORM, NN, OPTIM = "tests/test_loss.py", "tests/test_norm.py", "tests/test_nn.py", "tests/test_optim.py"
SERIAL, METRICS, TRAIN = "tests/test_serialization.py", "tests/test_metrics.py", "tests/test_train.py"
MODELS, TENSOR = "tests/test_models.py", "tests/test_tensor.py"
RESUME = "tests/test_resume_random_states.py"
# Where numba is installed (the test extra) the CPU fast paths of minigrad.kernels run instead of
# the generic array code; tests/test_kernels.py compares the two, so it comes last for mutants there.
KERNELS = "tests/test_kernels.py"

MUTANTS = [
    # ---- convolution geometry (minigrad/functional/im2col.py)
    M("im2col_ceil_mode_keeps_window_in_padding", "minigrad/functional/im2col.py",
      "if (out - 1) * stride >= size + padding:", "if (out - 1) * stride > size + padding:", IM2COL + " " + POOL),
    M("im2col_transpose_size_without_dilation", "minigrad/functional/im2col.py",
      "return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1",
      "return (size - 1) * stride - 2 * padding + (kernel - 1) + output_padding + 1", IM2COL + " " + CONV),
    M("im2col_window_width_stride_dilation_swapped", "minigrad/functional/im2col.py",
      "need_w = (ow - 1) * sw + dw * (kw - 1) + 1", "need_w = (ow - 1) * dw + sw * (kw - 1) + 1", IM2COL,
      within="def window_view("),
    M("im2col_window_height_stride_dilation_swapped", "minigrad/functional/im2col.py",
      "need_h = (oh - 1) * sh + dh * (kh - 1) + 1", "need_h = (oh - 1) * dh + sh * (kh - 1) + 1", IM2COL,
      within="def window_view("),
    M("col2im_height_stride_dilation_swapped", "minigrad/functional/im2col.py",
      "need_h = (oh - 1) * sh + dh * (kh - 1) + 1", "need_h = (oh - 1) * dh + sh * (kh - 1) + 1",
      IM2COL + " " + CONV, within="def col2im("),
    M("im2col_padding_bottom_right_swapped", "minigrad/functional/im2col.py",
      "bottom, right = max(need_h - top - h, 0), max(need_w - left - w, 0)",
      "bottom, right = max(need_w - left - w, 0), max(need_h - top - h, 0)", IM2COL + " " + CONV),
    # ---- convolution (minigrad/functional/conv.py)
    M("conv_transpose_bias_channels_reversed", "minigrad/functional/conv.py",
      "out += bias.data.reshape(1, -1, 1, 1)", "out += bias.data[::-1].reshape(1, -1, 1, 1)", CONV + " " + NN,
      within="def conv_transpose2d("),
    # ---- pooling (minigrad/functional/pooling.py)
    M("pool_disjoint_ignores_dilation", "minigrad/functional/pooling.py",
      "disjoint = all(s >= (k - 1) * d + 1 for k, s, d in zip(kernel, stride, dilation))",
      "disjoint = all(s >= k for k, s, d in zip(kernel, stride, dilation))", POOL + " " + KERNELS),
    # ---- losses (minigrad/functional/loss.py)
    M("loss_mean_divides_by_element_count", "minigrad/functional/loss.py",
      "normaliser = target_weight.sum()", "normaliser = target_weight.size", LOSS + " " + KERNELS),
    M("loss_smoothing_drops_the_class_weights", "minigrad/functional/loss.py",
      "total_weight = total_weight + smoothing * class_w.mean()", "total_weight = total_weight + smoothing",
      LOSS + " " + KERNELS),
    # ---- batch norm (minigrad/functional/norm.py)
    M("bn_running_var_biased", "minigrad/functional/norm.py",
      "unbiased = biased_var * (count / (count - 1))", "unbiased = biased_var", NORM + " " + NN),
    M("bn_running_mean_momentum_swapped", "minigrad/functional/norm.py",
      "running_mean.data[...] = (1 - momentum) * running_mean.data + momentum * mean",
      "running_mean.data[...] = momentum * running_mean.data + (1 - momentum) * mean", NORM + " " + NN),
    M("bn_weight_grad_without_inv_std", "minigrad/functional/norm.py",
      "grads.append(sum_g_centered * inv_std if need_weight else None)",
      "grads.append(sum_g_centered if need_weight else None)", NORM + " " + NN + " " + KERNELS),
    M("bn_module_cumulative_average_off_by_one", "minigrad/nn/norm.py",
      "return 1.0 / float(self.num_batches_tracked.item())",
      "return 1.0 / (float(self.num_batches_tracked.item()) + 1)", NN + " " + NORM),
    # ---- other layers
    M("upsample_bilinear_source_not_clamped_at_zero", "minigrad/functional/upsampling.py",
      "source = np.maximum((np.float64(ratio) * (dst + 0.5) - 0.5).astype(real), real(0))",
      "source = (np.float64(ratio) * (dst + 0.5) - 0.5).astype(real)", "tests/test_upsampling.py"),
    M("dropout_kept_values_not_scaled", "minigrad/functional/dropout.py",
      "return (uniform >= p).astype(input.dtype) * (1 / (1 - p))", "return (uniform >= p).astype(input.dtype)",
      "tests/test_dropout.py"),
    M("module_load_state_dict_never_strict", "minigrad/nn/module.py", "if strict:", "if False:", NN),
    # ---- optimizers and schedules (minigrad/optim)
    M("sgd_dampening_ignored", "minigrad/optim/sgd.py",
      'buf += (1 - group["dampening"]) * grad', "buf += grad", OPTIM + " " + KERNELS),
    M("sgd_nesterov_ignored", "minigrad/optim/sgd.py",
      'grad = grad + momentum * buf if group["nesterov"] else buf', "grad = buf", OPTIM + " " + KERNELS),
    M("sgd_weight_decay_sign", "minigrad/optim/sgd.py",
      'grad = grad + group["weight_decay"] * param.data', 'grad = grad - group["weight_decay"] * param.data',
      OPTIM + " " + KERNELS),
    M("adam_no_first_moment_bias_correction", "minigrad/optim/adam.py",
      "step_size = lr / (1 - beta1 ** step)", "step_size = lr", OPTIM),
    M("adam_eps_inside_the_bias_correction", "minigrad/optim/adam.py",
      'denom = xp.sqrt(second_moment) / (1 - beta2 ** step) ** 0.5 + group["eps"]',
      'denom = (xp.sqrt(second_moment) + group["eps"]) / (1 - beta2 ** step) ** 0.5', OPTIM),
    M("adamw_decay_without_lr", "minigrad/optim/adam.py",
      "param.data *= 1 - lr * weight_decay", "param.data *= 1 - weight_decay", OPTIM),
    M("adam_amsgrad_keeps_no_maximum", "minigrad/optim/adam.py",
      "xp.maximum(second_moment, exp_avg_sq, out=second_moment)", "second_moment[...] = exp_avg_sq", OPTIM),
    M("poly_lr_runs_past_total_iters", "minigrad/optim/lr_scheduler.py",
      "return base_lr * (1.0 - min(self.total_iters, epoch) / self.total_iters) ** self.power",
      "return base_lr * abs(1.0 - epoch / self.total_iters) ** self.power", OPTIM),
    M("optimizer_state_keeps_saved_dtype", "minigrad/optim/optimizer.py",
      'dtype = param.dtype if array.dtype.kind == "f" else array.dtype', "dtype = array.dtype", OPTIM),
    # ---- serialization (minigrad/serialization.py)
    M("save_tuples_come_back_as_lists", "minigrad/serialization.py",
      'return tuple(_decode(v, entries, device) for v in value)', 'return [_decode(v, entries, device) for v in value]',
      SERIAL),
    M("save_file_mode_0600", "minigrad/serialization.py",
      'fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)',
      'fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)', SERIAL),
    M("load_accepts_any_format_version", "minigrad/serialization.py",
      "if structure.get(\"format\") != _FORMAT:", "if False:", SERIAL),
    M("checkpoint_accepts_any_version", "segnets/checkpoint.py",
      'if meta.get("version") != VERSION:', "if False:", SERIAL),
    # ---- metrics (segnets/metrics.py)
    M("metrics_batch_of_ignored_pixels_not_skipped", "segnets/metrics.py", "if target.size == 0:", "if False:",
      METRICS),
    M("metrics_union_counts_the_intersection_twice", "segnets/metrics.py",
      "union = target_total + pred_total - correct", "union = target_total + pred_total", METRICS),
    M("metrics_fwiou_weighted_by_predictions", "segnets/metrics.py",
      "weighted = np.where(union > 0, target_total * np.nan_to_num(per_class_iou), 0.0).sum()",
      "weighted = np.where(union > 0, pred_total * np.nan_to_num(per_class_iou), 0.0).sum()", METRICS),
    M("metrics_mean_acc_scores_absent_classes_zero", "segnets/metrics.py",
      '"mean_acc": _nanmean(per_class_acc),', '"mean_acc": float(np.nan_to_num(per_class_acc).mean()),', METRICS),
    # ---- resume (segnets/run.py)
    M("resume_skips_numpy_random_state", "segnets/run.py",
      "np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))", "pass",
      RESUME + " " + TRAIN),
    M("resume_skips_python_random_state", "segnets/run.py",
      "random.setstate((version, tuple(internal), python_gauss))", "pass", RESUME + " " + TRAIN),
    M("resume_skips_minigrad_random_state", "segnets/run.py",
      'minigrad.random.set_rng_state(state["minigrad"])', "pass", TRAIN),
    # ---- models (segnets/models)
    M("unet_concatenates_decoder_map_first", "segnets/models/unet.py",
      'x = getattr(self, f"dec{level}")(minigrad.cat([skip, x], dim=1))',
      'x = getattr(self, f"dec{level}")(minigrad.cat([x, skip], dim=1))', MODELS),
    M("fcn_fuse_crops_the_coarse_map", "segnets/models/fcn.py",
      "return crop(coarse, 0, 0, (h, w)) + crop(skip, offset, offset, (h, w))",
      "return crop(coarse, offset, offset, (h, w)) + crop(skip, 0, 0, (h, w))", MODELS),
    # ---- gradcheck (minigrad/gradcheck.py)
    M("gradcheck_rtol_100x_looser", "minigrad/gradcheck.py",
      "def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):",
      "def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-1, seed=0, raise_exception=True):", TENSOR),
    M("gradcheck_atol_100x_looser", "minigrad/gradcheck.py",
      "def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, raise_exception=True):",
      "def gradcheck(fn, inputs, eps=1e-6, atol=1e-3, rtol=1e-3, seed=0, raise_exception=True):", TENSOR),
]


# ---------------------------------------------------------------------------- applying a mutant
class MovedLine(Exception):
    """A mutant's line is not in its file exactly once: the code has changed under the list."""


def _block(lines, within):
    """(start, end) line range of the def/class whose header contains ``within`` (whole file if empty)."""
    if not within:
        return 0, len(lines)
    starts = [i for i, line in enumerate(lines) if within in line]
    if len(starts) != 1:
        raise MovedLine(f"{len(starts)} lines contain {within!r}")
    start = starts[0]
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and len(line) - len(line.lstrip()) <= indent and not line.lstrip().startswith((")", "#")):
            break
        end += 1
    return start, end


def mutated_text(text, mutant):
    """The file's text with the mutant's line replaced; MovedLine if the line is not there exactly once."""
    lines = text.splitlines(keepends=True)
    start, end = _block(lines, mutant.within)
    hits = [i for i in range(start, end) if lines[i].strip() == mutant.original]
    if len(hits) != 1:
        where = f" inside {mutant.within!r}" if mutant.within else ""
        raise MovedLine(f"the line {mutant.original!r} occurs {len(hits)} times{where} (expected once)")
    i = hits[0]
    indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
    newline = lines[i][len(lines[i].rstrip("\r\n")):]
    lines[i] = indent + mutant.replacement + newline
    return "".join(lines)


# ---------------------------------------------------------------------------- copies of the tree
def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


def make_copy(tree, parent):
    """A fresh copy of the repository's code under ``parent``; the working tree is only read."""
    target = tempfile.mkdtemp(prefix="mutant-", dir=parent)
    if tree == "head":
        with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", "HEAD"))) as archive:
            try:
                archive.extractall(target, filter="data")
            except TypeError:  # Python without extraction filters
                archive.extractall(target)
    else:
        for name in _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").decode().split("\0"):
            source = os.path.join(ROOT, name)
            if name and os.path.isfile(source):  # tracked files deleted on disk are skipped
                os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
                shutil.copy2(source, os.path.join(target, name))
    return target


def _environment(copy):
    env = dict(os.environ, CI="true", PYTHONPATH=copy + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("HYPOTHESIS_PROFILE", None)
    return env


def run_tests(copy, tests, timeout, deselect=(), stop_at_first=True):
    """(return code or 'timeout', seconds, failing tests, output tail) of pytest on ``tests`` in ``copy``."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    command += ["-x"] if stop_at_first else []
    command += [arg for node in deselect for arg in ("--deselect", node)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=copy, env=_environment(copy), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - started, "", ""
    output = done.stdout + done.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return done.returncode, time.perf_counter() - started, failed, output[-3000:]


def check_copy_is_imported(copy, timeout):
    """The copy's packages, not an installed one, are what Python and pytest import there."""
    probe = subprocess.run([sys.executable, "-c", "import minigrad, segnets; print(minigrad.__file__); "
                            "print(segnets.__file__)"], cwd=copy, env=_environment(copy),
                           capture_output=True, text=True)
    paths = probe.stdout.split()
    real = os.path.realpath(copy)
    if probe.returncode != 0 or len(paths) != 2 or not all(os.path.realpath(p).startswith(real) for p in paths):
        raise SystemExit(f"error: in the copy {copy}, Python imports {paths or probe.stderr.strip()} "
                         f"instead of the copy's packages")
    init = os.path.join(copy, "minigrad", "__init__.py")
    with open(init) as f:
        original = f.read()
    try:
        with open(init, "w") as f:
            f.write('raise ImportError("tools/mutate.py canary: the copy is imported")\n' + original)
        code, _, _, output = run_tests(copy, ["tests/test_tensor.py"], timeout)  # -x: stops at once
    finally:
        with open(init, "w") as f:
            f.write(original)
    if code in (0, 5) or "mutate.py canary" not in output:
        raise SystemExit("error: a broken minigrad in the copy did not fail its tests: the tests import "
                         "another minigrad (an installed package?)")


# ---------------------------------------------------------------------------- running
def run_mutant(mutant, copies, timeout, deselect):
    copy = copies.get()
    path = os.path.join(copy, mutant.file)
    try:
        with open(path) as f:
            original = f.read()
        with open(path, "w") as f:
            f.write(mutated_text(original, mutant))
        try:
            code, seconds, failed, output = run_tests(copy, mutant.tests, timeout, deselect)
        finally:
            with open(path, "w") as f:
                f.write(original)
    finally:
        copies.put(copy)
    if code == 5:
        raise SystemExit(f"error: mutant {mutant.name}: pytest collected no tests from {' '.join(mutant.tests)}")
    status = "survived" if code == 0 else "killed"
    return {"name": mutant.name, "file": mutant.file, "status": status, "seconds": round(seconds, 1),
            "killed_by": " ".join(failed) or ("timeout" if code == "timeout" else f"exit status {code}" if code else ""),
            "output_tail": output if status == "survived" else ""}


def select(names):
    if not names:
        return list(MUTANTS)
    chosen = [m for m in MUTANTS if any(m.name.startswith(n) for n in names)]
    if not chosen:
        raise SystemExit(f"error: no mutant name starts with {' or '.join(names)}; see --list")
    return chosen


def check_lines(mutants, copy):
    problems = []
    for mutant in mutants:
        try:
            with open(os.path.join(copy, mutant.file)) as f:
                mutated_text(f.read(), mutant)
        except (OSError, MovedLine) as e:
            problems.append(f"{mutant.name} ({mutant.file}): {e}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="run only the mutants whose names start with these")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="only check that every mutant's line is in the code")
    parser.add_argument("--tree", choices=["head", "worktree"], default="head",
                        help="mutate the committed code (default) or the working tree's files as they are")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own copy [1]")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant's tests; past it: killed")
    parser.add_argument("--no-baseline", action="store_true", help="skip running the tests on the unmutated copy")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    mutants = select(args.names)
    if args.list:
        for m in mutants:
            print(f"{m.name:48s} {m.file:34s} {m.original}  ->  {m.replacement}")
        return 0
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the copies are removed
    parent = tempfile.mkdtemp(prefix="mutate-")
    try:
        copy = make_copy(args.tree, parent)
        problems = check_lines(mutants, copy)
        if problems:
            print("error: these mutants' lines are not in the code as written (it has moved; update "
                  "tools/mutate.py):\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        if args.check:
            print(f"all {len(mutants)} mutants' lines found in the {args.tree} tree")
            return 0
        check_copy_is_imported(copy, args.timeout)
        tests = sorted({t for m in mutants for t in m.tests})
        deselect = []
        if not args.no_baseline:
            code, seconds, failed, output = run_tests(copy, tests, args.timeout, stop_at_first=False)
            if code != 0 and not failed:
                print(f"error: the unmutated code fails its tests (exit status {code}):\n{output}", file=sys.stderr)
                return 2
            print(f"baseline: {' '.join(tests)} on the unmutated {args.tree} tree ({seconds:.0f} s): "
                  + ("all pass" if not failed else f"{len(failed)} fail there and are left out for every "
                     f"mutant: {' '.join(failed)}"), flush=True)
            deselect = failed
        copies = queue.Queue()
        copies.put(copy)
        for _ in range(args.jobs - 1):
            copies.put(make_copy(args.tree, parent))
        results = []
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_mutant, m, copies, args.timeout, deselect) for m in mutants]
            for future in futures:
                r = future.result()
                results.append(r)
                print(f"{r['status']:8s} {r['name']:48s} {r['seconds']:6.1f} s  {r['killed_by']}", flush=True)
    finally:
        shutil.rmtree(parent, ignore_errors=True)

    killed = sum(r["status"] == "killed" for r in results)
    print(f"\nscore: {killed} of {len(results)} mutants killed ({args.tree} tree)")
    for r in results:
        if r["status"] == "survived":
            print(f"survived: {r['name']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tree": args.tree, "killed": killed, "total": len(results), "results": results}, f, indent=1)
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
