"""The training command line: its flags, and the run's settings made from them.

``build_parser()`` defines the flags of ``python -m segnets.train``;
``resolve_settings(args)`` turns the parsed flags into the run's settings: the
recipe of ``--net`` (segnets/recipes.py) with the given flags on top, or, with
``--resume``, the settings saved in the checkpoint with the few flags a resumed
run may change.

Adding a setting: a flag in ``build_parser`` (a numeric one with ``type=Number(...)``,
so that a bad value is refused at parse time, naming the flag, with exit status 2),
and its default in ``recipes.COMMON``. A flag that only steers this invocation and
is not a setting of the run (saved in config.json and checkpoints) goes into
``NOT_SETTINGS``; one that a resumed run may change goes into ``RESUME_OVERRIDABLE``.
"""
import argparse
import math
import os
import uuid
from pathlib import Path

from minigrad import backend

from . import recipes
from .checkpoint import load_checkpoint
from .models import MODELS
from .recipes import SettingsError, parse_options

NETS = tuple(MODELS)
DATASETS = ("shapes", "voc", "folder", "idx-scenes")
# Settings a resumed run may change; every other setting comes from the checkpoint.
RESUME_OVERRIDABLE = ("device", "output_dir", "data_dir", "epochs", "tensorboard")
# Flags that steer this invocation only: never stored in the settings.
NOT_SETTINGS = ("resume", "eval_only", "overwrite", "model_opt", "data_opt", "distributed")


class Number:
    """An argparse ``type`` for numeric flags: ``int`` or a finite ``float`` in a range.

    ``Number(int, minimum=1)``, ``Number(float, minimum=0.0, below=1.0)``: a value
    outside the range (or NaN, inf, a non-number) is refused by argparse with
    ``error: argument --flag: ...`` and exit status 2, before anything runs.
    """

    def __init__(self, kind, minimum=None, maximum=None, below=None):
        self.kind, self.minimum, self.maximum, self.below = kind, minimum, maximum, below
        self.__name__ = kind.__name__  # argparse names the type in some messages

    def describe(self):
        what = "an integer" if self.kind is int else "a finite number"
        limits = [f">= {self.minimum}"] if self.minimum is not None else []
        limits += [f"<= {self.maximum}"] if self.maximum is not None else []
        limits += [f"< {self.below}"] if self.below is not None else []
        return what + (" " + " and ".join(limits) if limits else "")

    def __call__(self, text):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            value = None
        if (value is None or (self.kind is float and not math.isfinite(value))
                or (self.minimum is not None and value < self.minimum)
                or (self.maximum is not None and value > self.maximum)
                or (self.below is not None and value >= self.below)):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        return value


def device_flag(text):
    """--device: cpu, gpu, or gpu:K (cuda works for gpu)."""
    name, _, index = text.lower().partition(":")
    if name not in ("cpu", "gpu", "cuda") or (index and (name == "cpu" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, gpu or gpu:K (K a GPU index), got {text!r}")
    return "cpu" if name == "cpu" else "gpu" + (f":{int(index)}" if index else "")


def check_writable_folder(path, flag):
    """SettingsError (naming ``flag``) unless ``path`` is a folder, or can be made one, that can be written."""
    path = Path(path)
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise SettingsError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingsError(f"{flag} {path}: {existing} is not writable")


def check_writable_file(path, flag):
    """SettingsError (naming ``flag``) unless ``path`` can be written as a file (not a folder, in a writable one)."""
    path = Path(path)
    if path.is_dir():
        raise SettingsError(f"{flag} {path}: is a folder; expected the name of a file to write")
    if path.exists() and not os.access(path, os.W_OK):
        raise SettingsError(f"{flag} {path}: the file is not writable")
    check_writable_folder(path.parent, flag)


POSITIVE_INT = Number(int, minimum=1)
NON_NEGATIVE = Number(float, minimum=0.0)
SEED = Number(int, minimum=0, maximum=2**32 - 1)  # NumPy's legacy seed range


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m segnets.train",
        description="Train a semantic-segmentation net (FCN, DeconvNet, U-Net, DeepLab v1/v2/v3/v3+, SegNet, "
                    "PSPNet: --net lists them) with minigrad. Every net has a default recipe "
                    "(segnets/recipes.py) on the embedded 'shapes' data (FCN, DeconvNet and U-Net train "
                    "in about ten minutes on a 2-core CPU, the ResNet nets far longer); the flags below "
                    "override it ([recipe] marks the values that come from it).",
        epilog="default recipes (segnets/recipes.py):\n" + recipes.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=NETS, help="network to train (required unless --resume)")
    p.add_argument("--device", type=device_flag, help="where to run: cpu (NumPy), gpu (CuPy; under mpiexec each "
                   "process takes GPU <its rank on the machine> %% <GPUs>) or gpu:K (GPU K) [default: cpu]")
    p.add_argument("--threads", type=POSITIVE_INT,
                   help="CPU threads for minigrad (minigrad.set_num_threads: NumPy's OpenBLAS and the CPU "
                        "kernels), as torch.set_num_threads [default: every core]")
    p.add_argument("--distributed", choices=("auto", "none", "mpi", "nccl"), default="auto",
                   help="data parallelism over the processes of an MPI launch (mpiexec -n N python -m "
                        "segnets.train ...; --batch-size is per process): auto = on when launched with more "
                        "than one process (MPI on the CPU, NCCL on GPUs) [default: auto]")
    p.add_argument("--dataset", choices=DATASETS, help="training data [default: shapes]")
    p.add_argument("--data-dir", help="directory of the dataset (voc, folder, idx-scenes; shapes needs none)")
    p.add_argument("--data-opt", action="append", metavar="KEY=VALUE", default=None,
                   help="dataset option passed to build_dataset, repeatable "
                        "(e.g. num_train=64 image_size=32 for shapes)")
    p.add_argument("--epochs", type=POSITIVE_INT, help="number of epochs (with --resume: the total) [recipe]")
    p.add_argument("--batch-size", type=POSITIVE_INT,
                   help="images per training step (and per eval batch) [recipe]")
    p.add_argument("--lr", type=NON_NEGATIVE, help="base learning rate [recipe]")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), help="optimizer [recipe]")
    p.add_argument("--momentum", type=Number(float, minimum=0.0, below=1.0), help="SGD momentum, 0 <= m < 1 [recipe]")
    p.add_argument("--weight-decay", type=NON_NEGATIVE,
                   help="weight decay (L2 for sgd/adam, decoupled for adamw) [recipe]")
    p.add_argument("--lr-schedule", choices=("constant", "step", "poly", "cosine"),
                   help="learning-rate schedule: poly steps every iteration (lr*(1-it/total)^0.9), "
                        "step (x0.1 every third of the epochs) and cosine step every epoch [recipe]")
    p.add_argument("--width", type=POSITIVE_INT, help="channels of the first conv block (64 in the papers) [recipe]")
    p.add_argument("--crop-size", type=POSITIVE_INT, help="side of the random training crop [recipe]")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE", default=None,
                   help="option passed to build_model, repeatable: padding=same, pad100=false, "
                        "fc_kernel=2, batch_norm=true, learn_upsampling=true (ints/floats/bools parsed)")
    p.add_argument("--class-weights", choices=("none", "median-freq"),
                   help="loss weights per class: none, or median-frequency balancing "
                        "(Eigen & Fergus) from the training masks [default: none]")
    p.add_argument("--seed", type=SEED, help="seed of every random generator [default: 0]")
    p.add_argument("--output-dir", help="where outputs go [default: a new folder runs/<net>-<dataset>-<time> "
                                        "(-2, -3, ... added if it exists); with --resume: the checkpoint's "
                                        "folder]; a folder that holds another run's files is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --output-dir to be a folder that holds another run's files: they are deleted "
                        "(and listed) before this run writes its own; with --resume of an earlier "
                        "checkpoint of the folder's run, drop the later epochs")
    p.add_argument("--init-weights", metavar="FILE",
                   help="start the net from these weights instead of its random init: a segnets checkpoint, "
                        "a state dict saved with minigrad.save, or an .npz of name -> array with segnets names "
                        "or, for fcn*/deconvnet, torchvision's vgg16 / vgg16_bn keys (the papers start from "
                        "ImageNet VGG16); tensors the file lacks keep their init, a tensor of another shape "
                        "is an error")
    p.add_argument("--resume", metavar="CKPT", help="continue training from a checkpoint "
                                                    "(model, optimizer, scheduler, epoch, random states)")
    p.add_argument("--tensorboard", action="store_const", const=True,
                   help="also write TensorBoard event files into the run folder (loss, lr, every metric, "
                        "per-class IoU, the prediction grid); needs tensorboardX")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate (the --resume checkpoint, the --init-weights file, else the untrained net) "
                        "on the val split")
    return p


def resolve_settings(args):
    """The run's settings: the recipe of --net with the given flags on top.

    With --resume the settings saved in the checkpoint come first instead, and only
    --device, --output-dir, --data-dir and --epochs may change them (anything else
    would break the exact continuation). Returns (settings, checkpoint or None).
    """
    given = {k: v for k, v in vars(args).items() if v is not None and k not in NOT_SETTINGS}
    model_options = parse_options(args.model_opt, "--model-opt")
    data_options = parse_options(args.data_opt, "--data-opt")
    if args.resume:
        checkpoint = load_checkpoint(args.resume)
        settings = dict(checkpoint["meta"]["settings"])
        _check_resume_flags(settings, given, model_options, data_options, args.resume)
        settings.update({k: v for k, v in given.items() if k in RESUME_OVERRIDABLE})
        settings.setdefault("output_dir", None)
        if "output_dir" not in given:
            settings["output_dir"] = str(Path(args.resume).resolve().parent)
        _check_tensorboard(settings)
        return settings, checkpoint
    if args.net is None:
        raise SettingsError("--net is required (unless --resume gives a checkpoint)")
    settings = recipes.recipe(args.net)
    settings.update(given)
    settings["model_options"] = {**settings["model_options"], **model_options}
    settings["data_options"] = {**settings["data_options"], **data_options}
    settings.setdefault("device", "cpu")
    settings.setdefault("data_dir", None)
    settings.setdefault("output_dir", None)  # None: a new folder under runs/, made when the run starts
    settings["run_id"] = uuid.uuid4().hex  # tells this run's files from another's (run.check_output_dir)
    _check_tensorboard(settings)
    return settings, None


def _check_tensorboard(settings):
    """--tensorboard without its writer package fails before any work, saying what to install."""
    if settings.get("tensorboard"):
        from .tensorboard_log import load_writer_class
        try:
            load_writer_class()
        except ImportError as e:
            raise SettingsError(str(e)) from None


def _check_resume_flags(saved, given, model_options, data_options, path):
    clashes = [f"--{k.replace('_', '-')} {given[k]} (checkpoint: {saved.get(k)})"
               for k in given if k not in RESUME_OVERRIDABLE and given[k] != saved.get(k)]
    for flag, options, key in (("--model-opt", model_options, "model_options"),
                               ("--data-opt", data_options, "data_options")):
        clashes += [f"{flag} {k}={v} (checkpoint: {saved[key].get(k)})"
                    for k, v in options.items() if saved[key].get(k) != v]
    if clashes:
        raise SettingsError(f"--resume {path}: a resumed run keeps the checkpoint's settings; only "
                            f"--device, --output-dir, --data-dir and --epochs may change. Differing: "
                            + ", ".join(clashes))


def check_device(device):
    """Fail at once with backend's clear message when the GPU cannot be used."""
    if backend.normalize_device(device) == "gpu":
        backend.cupy()  # raises RuntimeError saying what is missing

