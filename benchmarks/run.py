"""Command line: run the suites, print the table, write JSON and Markdown.

    python -m benchmarks.run --device cpu --suite all            # the CPU table (a few minutes)
    python -m benchmarks.run --device gpu --suite all            # needs CuPy and a CUDA PyTorch
    python -m benchmarks.run --device cpu --suite all --quick    # every case once at tiny sizes

Writes ``<output-dir>/<device>-<date>[-<suite>][-<N>thread][-quick].json`` and ``.md``
(``-2``, ``-3``, ... where an earlier run has the name); the exit
status is 1 when any case failed (its row then carries the error).
"""
import argparse
import datetime
import json
import os
import re
import sys

from . import report
from .common import MIN_SAMPLE_S, SETTLE_S, SLOW_SAMPLE_S, Context, load_average, machine_info, unused_stem

HERE = os.path.dirname(os.path.abspath(__file__))
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")  # recorded
README = os.path.join(HERE, "README.md")
README_BLOCK = re.compile(r"(<!-- results:cpu:start -->\n).*?(<!-- results:cpu:end -->)", re.S)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--suite", choices=("ops", "models", "all"), default="all")
    p.add_argument("--quick", action="store_true", help="every case once at tiny sizes (a smoke test, no timing)")
    p.add_argument("--output-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--repeats", type=int, help="timed samples per figure (default 5 ops, 3 models; 1 quick)")
    p.add_argument("--warmup", type=int, help="untimed runs first (default 1; 0 quick)")
    p.add_argument("--threads", type=int,
                   help="threads for minigrad (minigrad.set_num_threads: OpenBLAS and its CPU kernels) and "
                        "PyTorch alike (default: what OpenBLAS already has; 1 gives steadier numbers on a "
                        "shared machine)")
    p.add_argument("--no-scaling", action="store_true",
                   help="models on CPU: skip the 1-thread step timings of the thread-scaling table")
    p.add_argument("--only", nargs="+", help="ops: only cases whose op/case/layer contains one of these words")
    p.add_argument("--nets", nargs="+", help="models: a subset of fcn32s fcn16s fcn8s deconvnet unet "
                   "(default), or the ResNet nets: deeplabv2_resnet101 deeplabv3_resnet101 "
                   "deeplabv3plus_resnet101 pspnet50 pspnet101")
    p.add_argument("--sizes", nargs="+", help="models: sizes to run (default: small on cpu, small full on gpu)")
    p.add_argument("--no-memory", action="store_true", help="models: skip the peak-memory measurements")
    p.add_argument("--update-readme", action="store_true",
                   help="replace the CPU table in benchmarks/README.md with this run's (device cpu only)")
    return p.parse_args(argv)


def output_stem(args, date):
    stem = f"{args.device}-{date}"
    if args.suite != "all":
        stem += f"-{args.suite}"
    if args.threads is not None:
        stem += f"-{args.threads}thread"
    return stem + ("-quick" if args.quick else "")


def run(args):
    ctx = Context(args.device, quick=args.quick, repeats=args.repeats, warmup=args.warmup, threads=args.threads)
    ctx.scaling = not args.no_scaling
    date = datetime.date.today().isoformat()
    results = {
        "device": args.device, "date": date, "quick": args.quick, "suite": args.suite,
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "machine": machine_info(ctx),
        "settings": {"repeats": ctx.repeats, "model_repeats": ctx.model_repeats, "warmup": ctx.warmup,
                     "min_sample_ms": 1e3 * MIN_SAMPLE_S, "slow_sample_s": SLOW_SAMPLE_S, "dtype": "float32",
                     "settle_s": SETTLE_S if args.device == "cpu" else 0.0,
                     "env": {name: os.environ.get(name) for name in THREAD_ENV}},
    }
    if args.suite in ("ops", "all"):
        from . import ops
        print(f"ops suite on {args.device}:", flush=True)
        results["ops"] = ops.run(ctx, only=args.only, log=_log)
    if args.suite in ("models", "all"):
        from . import models
        print(f"models suite on {args.device}:", flush=True)
        results["models"] = models.run(ctx, nets=args.nets, sizes=args.sizes, memory=not args.no_memory, log=_log)
    results["machine"]["load_average_at_end"] = load_average()
    results["errors"] = count_errors(results)
    return results


def _log(line):
    print(line, flush=True)


def count_errors(results):
    return sum("error" in row for suite in ("ops", "models") if suite in results for row in results[suite]["rows"])


def write(results, output_dir, stem):
    os.makedirs(output_dir, exist_ok=True)
    stem = unused_stem(output_dir, stem)
    json_path = os.path.join(output_dir, stem + ".json")
    md_path = os.path.join(output_dir, stem + ".md")
    with open(json_path, "x") as f:
        json.dump(results, f, indent=1, default=float)
    with open(md_path, "w") as f:
        f.write(report.markdown(results))
    return json_path, md_path


def update_readme(text, note=""):
    """Put ``text`` (one level deeper: it sits under the README's own section) between the markers."""
    text = re.sub(r"^#", "##", text, flags=re.M) + (f"\n{note}\n" if note else "")
    with open(README) as f:
        readme = f.read()
    if not README_BLOCK.search(readme):
        raise SystemExit(f"{README} has no <!-- results:cpu:start --> ... <!-- results:cpu:end --> block")
    with open(README, "w") as f:
        f.write(README_BLOCK.sub(lambda m: m.group(1) + text + "\n" + m.group(2), readme))


def main(argv=None):
    args = parse_args(argv)
    results = run(args)
    text = report.markdown(results)
    print("\n" + text)
    json_path, md_path = write(results, args.output_dir, output_stem(args, results["date"]))
    print(f"wrote {json_path} and {md_path}")
    if args.update_readme and args.device == "cpu":
        update_readme(text)
        print(f"updated {README}")
    if results["errors"]:
        print(f"{results['errors']} case(s) failed: see the ERROR rows", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
