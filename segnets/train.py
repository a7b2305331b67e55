"""Train a segmentation net: ``python -m segnets.train --net deconvnet --device cpu``.

A training step, from the command line down to the ops:

    main()                      parse flags; settings = recipe for --net, then the flags on top
    train(settings)
      build_data()              datasets -> mean/std -> TrainTransform/NetInputTransform -> DataLoaders
      build_net()               segnets.build_model -> minigrad.nn modules (Conv2d calls
                                minigrad.functional.conv2d: im2col + one matmul)
      build_optimizer()         SGD / Adam / AdamW over the parameters that require grad
      build_scheduler()         constant / step / poly / cosine
      for epoch:
        train_one_epoch()       for each batch:
          images = minigrad.Tensor(batch, device=...)
          loss = compute_loss()         logits = model(images); F.cross_entropy(logits,
                                        masks, weight=class weights, ignore_index=255)
          optimizer.zero_grad(); loss.backward(); optimizer.step()
          scheduler.step()              per iteration for "poly" (DeepLab's schedule)
        scheduler.step()        per epoch for "step" and "cosine"
        evaluate()              one confusion matrix over the whole val split, on the model's device
        log + save              metrics.jsonl, predictions/epoch_NNN.png, checkpoint_best/last.npz

Outputs in --output-dir: config.json, metrics.jsonl (one JSON object per epoch),
checkpoint_last.npz, checkpoint_best.npz (best val mIoU), predictions/epoch_NNN.png.

Reliability. Checkpoints are written atomically (``minigrad.save``: temporary file,
then rename) and hold model, optimizer, scheduler, the loader's position and every
random state (minigrad, numpy, Python), so ``--resume`` continues exactly: an
interrupted and resumed run ends with the same weights and metrics as an
uninterrupted one (bit for bit on CPU). checkpoint_last.npz is written before the
first epoch and after every epoch. Ctrl-C (and SIGTERM):
  * the first Ctrl-C lets the current step finish, then saves checkpoint_last.npz
    at that step (mid-epoch: the loader's position and the epoch's running loss
    are in it) and stops;
  * a second Ctrl-C (or any other KeyboardInterrupt) stops at once; the state in
    memory may then be half-way through optimizer.step(), so nothing new is saved
    unless the interrupt came after an epoch had fully finished (then that epoch's
    checkpoint is written again); checkpoint_last.npz keeps the last safe state.
A NaN or inf loss stops the run before that step's update, naming the epoch and
iteration, and saves nothing over the last good checkpoint.
"""
import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import minigrad
import minigrad.functional as F
from minigrad import backend

from . import recipes
from .checkpoint import CheckpointError, load_checkpoint, load_model_state, read_weights, save_checkpoint
from .evaluate import center_crop, confusion_matrix, eval_batch_size, evaluate, metrics_dict, to_tensor
from .recipes import SettingsError, parse_options
from .visualize import prediction_grid, save_png

IGNORE_INDEX = 255
NETS = ("fcn32s", "fcn16s", "fcn8s", "deconvnet", "unet")
DATASETS = ("shapes", "voc", "folder", "idx-scenes")
# Settings a resumed run may change; every other setting comes from the checkpoint.
RESUME_OVERRIDABLE = ("device", "output_dir", "data_dir", "epochs")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the message names the step."""

    def __init__(self, epoch, iteration, value):
        super().__init__(f"loss is {value} at epoch {epoch}, iteration {iteration}; training stopped "
                         "before this step's update (checkpoint_last.npz still holds the last good epoch)")
        self.epoch, self.iteration, self.value = epoch, iteration, value


# ---------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m segnets.train",
        description="Train a semantic-segmentation net (FCN-32s/16s/8s, DeconvNet, U-Net) with minigrad. "
                    "Every net has a default recipe (segnets/recipes.py) that trains on the embedded "
                    "'shapes' data in about ten minutes on a 2-core CPU; the flags below override it "
                    "([recipe] marks the values that come from it).",
        epilog="default recipes (segnets/recipes.py):\n" + recipes.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=NETS, help="network to train (required unless --resume)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="where to run: cpu (NumPy) or gpu (CuPy) [default: cpu]")
    p.add_argument("--dataset", choices=DATASETS, help="training data [default: shapes]")
    p.add_argument("--data-dir", help="directory of the dataset (voc, folder, idx-scenes; shapes needs none)")
    p.add_argument("--data-opt", action="append", metavar="KEY=VALUE", default=None,
                   help="dataset option passed to build_dataset, repeatable "
                        "(e.g. num_train=64 image_size=32 for shapes)")
    p.add_argument("--epochs", type=int, help="number of epochs [recipe]")
    p.add_argument("--batch-size", type=int, help="images per training step (and per eval batch) [recipe]")
    p.add_argument("--lr", type=float, help="base learning rate [recipe]")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), help="optimizer [recipe]")
    p.add_argument("--momentum", type=float, help="SGD momentum [recipe]")
    p.add_argument("--weight-decay", type=float, help="weight decay (L2 for sgd/adam, decoupled for adamw) [recipe]")
    p.add_argument("--lr-schedule", choices=("constant", "step", "poly", "cosine"),
                   help="learning-rate schedule: poly steps every iteration (lr*(1-it/total)^0.9), "
                        "step (x0.1 every third of the epochs) and cosine step every epoch [recipe]")
    p.add_argument("--width", type=int, help="channels of the first conv block (64 in the papers) [recipe]")
    p.add_argument("--crop-size", type=int, help="side of the random training crop [recipe]")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE", default=None,
                   help="option passed to build_model, repeatable: padding=same, pad100=false, "
                        "fc_kernel=2, batch_norm=true, learn_upsampling=true (ints/floats/bools parsed)")
    p.add_argument("--class-weights", choices=("none", "median-freq"),
                   help="loss weights per class: none, or median-frequency balancing "
                        "(Eigen & Fergus) from the training masks [default: none]")
    p.add_argument("--seed", type=int, help="seed of every random generator [default: 0]")
    p.add_argument("--output-dir", help="where outputs go [default: runs/<net>-<dataset>-<time>; "
                                        "with --resume: the checkpoint's directory]")
    p.add_argument("--init-weights", metavar="FILE",
                   help="start the net from these weights instead of its random init: a segnets checkpoint, "
                        "a state dict saved with minigrad.save, or an .npz of name -> array with segnets names "
                        "or, for fcn*/deconvnet, torchvision's vgg16 / vgg16_bn keys (the papers start from "
                        "ImageNet VGG16); tensors the file lacks keep their init, a tensor of another shape "
                        "is an error")
    p.add_argument("--resume", metavar="CKPT", help="continue training from a checkpoint "
                                                    "(model, optimizer, scheduler, epoch, random states)")
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
    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("resume", "eval_only", "model_opt", "data_opt")}
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
        return settings, checkpoint
    if args.net is None:
        raise SettingsError("--net is required (unless --resume gives a checkpoint)")
    settings = recipes.recipe(args.net)
    settings.update(given)
    settings["model_options"] = {**settings["model_options"], **model_options}
    settings["data_options"] = {**settings["data_options"], **data_options}
    settings.setdefault("device", "cpu")
    settings.setdefault("data_dir", None)
    if "output_dir" not in settings:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        settings["output_dir"] = os.path.join("runs", f"{settings['net']}-{settings['dataset']}-{stamp}")
    return settings, None


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


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_device(args.device or "cpu")
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        settings, checkpoint = resolve_settings(args)
        if args.eval_only:
            evaluate_only(settings, checkpoint)
        else:
            train(settings, checkpoint)
    except (SettingsError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130  # train() has already said what was saved
    return 0


# ---------------------------------------------------------------------------- building blocks
@dataclass
class Data:
    train_set: object
    val_set: object
    train_loader: object
    val_loader: object
    classes: list
    mean: list
    std: list
    class_weights: object  # np.ndarray or None


def build_data(settings, mean=None, std=None):
    """Datasets, normalisation, transforms and loaders; mean/std from the training images unless given."""
    from .data import DataLoader, build_dataset
    from .data.transforms import TrainTransform, compute_mean_std
    from .predict import NetInputTransform, input_geometry

    name, options = settings["dataset"], dict(settings["data_options"])
    try:
        train_set = build_dataset(name, "train", data_dir=settings["data_dir"], seed=settings["seed"], **options)
        val_set = build_dataset(name, "val", data_dir=settings["data_dir"], seed=settings["seed"], **options)
        if name != "shapes":  # file datasets: report every bad file before spending time on training
            train_set.validate()
            val_set.validate()
    except (TypeError, ValueError) as e:  # DataError is a ValueError; TypeError: an unknown --data-opt
        raise SettingsError(f"--dataset {name} (data dir {settings['data_dir']}, options {options}): {e}") from e
    if len(train_set) < settings["batch_size"]:
        raise SettingsError(f"--batch-size {settings['batch_size']} is larger than the training set "
                            f"({len(train_set)} images); the last partial batch is dropped, so no step would run")
    if mean is None or std is None:
        mean, std = compute_mean_std(train_set)
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    train_transform = TrainTransform(crop_size=settings["crop_size"], scale_range=tuple(settings["scale_range"]),
                                     flip=settings["flip"], mean=mean, std=std, ignore_index=IGNORE_INDEX)
    geometry = input_geometry({"name": settings["net"], **settings["model_options"]})
    if not geometry.accepts(settings["crop_size"]):
        raise SettingsError(f"--crop-size {settings['crop_size']} does not fit {settings['net']} "
                            f"{settings['model_options']}: its inputs must be {geometry.first} + k * "
                            f"{geometry.step} pixels; the nearest is {geometry.valid_size(settings['crop_size'])}")
    val_transform = NetInputTransform(mean, std, geometry)  # padded to a size the net takes
    train_loader = DataLoader(train_set, batch_size=settings["batch_size"], shuffle=True, drop_last=True,
                              transform=train_transform, seed=settings["seed"], prefetch=settings["prefetch"])
    val_loader = DataLoader(val_set, batch_size=eval_batch_size(name, settings["batch_size"]),
                            transform=val_transform, seed=settings["seed"])
    weights = None
    if settings["class_weights"] == "median-freq":
        weights = median_frequency_weights(train_set, train_set.num_classes)
    return Data(train_set, val_set, train_loader, val_loader, list(train_set.classes), mean, std, weights)


def median_frequency_weights(dataset, num_classes, ignore_index=IGNORE_INDEX):
    """Eigen & Fergus's median-frequency balancing: weight_c = median(freq) / freq_c.

    freq_c = (pixels of class c) / (pixels of the images where c appears), counted
    over the raw training masks, ignore pixels left out. A class that never appears
    gets weight 0 (it has no pixels to weigh) and is left out of the median.
    """
    pixels = np.zeros(num_classes, np.float64)
    present_in = np.zeros(num_classes, np.float64)  # labelled pixels of images containing c
    for i in range(len(dataset)):
        mask = np.asarray(dataset[i][1])
        labels = mask[mask != ignore_index]
        counts = np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        present_in += (counts > 0) * labels.size
    seen = present_in > 0
    if not seen.any():
        raise SettingsError("median-freq class weights: the training masks have no labelled pixel")
    freq = np.where(seen, pixels / np.maximum(present_in, 1), 0.0)
    weights = np.where(seen, np.median(freq[seen]) / np.where(seen, freq, 1.0), 0.0)
    return weights.astype(np.float32)


def model_config(settings, num_classes):
    """Everything build_model needs, as stored in checkpoints: name, num_classes, in_channels, width, options."""
    return {"name": settings["net"], "num_classes": num_classes, "in_channels": 3,
            "width": settings["width"], **settings["model_options"]}


def build_net(settings, num_classes):
    from . import build_model
    config = dict(model_config(settings, num_classes))
    name = config.pop("name")
    try:
        model = build_model(name, **config)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"cannot build {name} with {config}: {e}") from e
    return model.to(settings["device"])


def load_initial_weights(model, path):
    """``--init-weights``: copy the file's tensors into ``model``; returns the names that kept their init.

    Matching is by name (torchvision VGG16 keys are translated first); names the model
    lacks are reported and skipped (a VGG16 classifier, another net's score layers).
    A file that matches nothing, or a tensor of another shape, is an error, and then
    the model is left as it was.
    """
    from . import load_torch_state_dict
    state = read_weights(path)
    try:
        missing, unexpected = load_torch_state_dict(model, state, strict=False)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"--init-weights {path}: {e}") from e
    loaded = len(model.state_dict()) - len(missing)
    if loaded == 0:
        raise CheckpointError(f"--init-weights {path}: none of its {len(state)} tensors is a tensor of "
                              f"{type(model).__name__} (first names: {', '.join(sorted(state)[:5])})")
    print(f"--init-weights {path}: {loaded} tensors loaded, {len(missing)} keep their init"
          + (f" ({', '.join(missing[:6])}{', ...' if len(missing) > 6 else ''})" if missing else "")
          + (f"; {len(unexpected)} in the file unused" if unexpected else ""), flush=True)
    return missing


def build_optimizer(settings, model):
    """The optimizer over the parameters that require grad (FCN's fixed bilinear kernels do not)."""
    from minigrad import optim
    params = [p for p in model.parameters() if p.requires_grad]
    kind, lr, decay = settings["optimizer"], settings["lr"], settings["weight_decay"]
    if kind == "sgd":
        return optim.SGD(params, lr=lr, momentum=settings["momentum"], weight_decay=decay)
    if kind == "adam":
        return optim.Adam(params, lr=lr, weight_decay=decay)
    if kind == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=decay)
    raise SettingsError(f"unknown optimizer {kind!r}")


def build_scheduler(settings, optimizer, iterations_per_epoch):
    """(scheduler or None, steps_per_iteration).

    poly steps every iteration (DeepLab / torchvision's reference); step and cosine
    step once per epoch; constant has no scheduler.
    """
    from minigrad.optim import lr_scheduler
    kind, epochs = settings["lr_schedule"], settings["epochs"]
    if kind == "constant":
        return None, False
    if kind == "poly":
        total = max(1, epochs * iterations_per_epoch)
        return lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=settings["poly_power"]), True
    if kind == "step":
        step_size = settings["step_size"] or max(1, epochs // 3)
        return lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=settings["step_gamma"]), False
    if kind == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs)), False
    raise SettingsError(f"unknown lr schedule {kind!r}")


def resume_scheduler(scheduler, saved):
    """Take the schedule's position (steps taken) from the checkpoint, its horizon from this run's --epochs.

    With unchanged --epochs this is exactly the saved schedule; a resumed run with
    more epochs stretches the rest of the schedule over them.
    """
    scheduler.load_state_dict({"last_epoch": int(saved["last_epoch"]), "base_lrs": list(saved["base_lrs"])})
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.lr_at(base_lr, scheduler.last_epoch)


def seed_everything(seed):
    minigrad.random.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def capture_rng_state():
    """Every random state a run draws from, as JSON-able data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    return {"minigrad": minigrad.random.get_rng_state(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "python": [version, list(internal), python_gauss]}


def restore_rng_state(state):
    minigrad.random.set_rng_state(state["minigrad"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, python_gauss = state["python"]
    random.setstate((version, tuple(internal), python_gauss))


def current_lr(optimizer):
    return float(optimizer.param_groups[0]["lr"])


# ---------------------------------------------------------------------------- one epoch
def compute_loss(model, images, masks, class_weights):
    """Forward pass and the pixel-wise cross-entropy (255 ignored), masks cropped to the logits' size."""
    logits = model(images)
    target = center_crop(masks, logits.shape[-2:])
    return F.cross_entropy(logits, target, weight=class_weights, ignore_index=IGNORE_INDEX)


@dataclass
class EpochProgress:
    """How far the epoch in progress has got: saved in a mid-epoch checkpoint so its loss sums up exactly."""
    epoch: int
    lr: float               # the lr of the epoch's first step (the whole epoch's, unless poly)
    iterations: int = 0
    loss_sum: float = 0.0

    @property
    def mean_loss(self):
        return self.loss_sum / max(self.iterations, 1)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM while training: the first one asks the loop to stop after the current step.

    The handler only sets a flag and gives the signal its previous handler back, so
    a second Ctrl-C raises KeyboardInterrupt at once (a second SIGTERM terminates).
    Signals can only be caught in the main thread; elsewhere they keep their meaning.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, self._previous[signum])
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving checkpoint_last.npz "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def train_one_epoch(run, progress, stop):
    """Train over the rest of the epoch (all of it unless resuming mid-epoch); False if stopped by Ctrl-C."""
    loader, epochs = run.data.train_loader, run.settings["epochs"]
    run.model.train()
    bar = tqdm(total=len(loader) * loader.batch_size, initial=progress.iterations * loader.batch_size,
               desc=f"epoch {progress.epoch}/{epochs}", unit="img", leave=False, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)  # logs: few updates
    if stop.requested:  # Ctrl-C came during the last evaluation or saving
        bar.close()
        return False
    try:
        for images, masks in loader:  # the loader counts a batch as done once handed out: stop only after a step
            images, masks = to_tensor(images, run.device), to_tensor(masks, run.device)
            loss = compute_loss(run.model, images, masks, run.class_weights)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLoss(progress.epoch, progress.iterations + 1, value)
            run.optimizer.zero_grad()
            loss.backward()
            run.optimizer.step()
            if run.per_iteration:
                run.scheduler.step()
            progress.iterations += 1
            progress.loss_sum += value
            bar.update(images.shape[0])
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{current_lr(run.optimizer):.2e}")
            if stop.requested:
                return False
    finally:
        bar.close()
    return True


# ---------------------------------------------------------------------------- the run
class Run:
    """The objects of one training run, its checkpoints and the files it writes."""

    def __init__(self, settings, checkpoint=None):
        self.settings = settings
        self.device = backend.normalize_device(settings["device"])
        self.out = Path(settings["output_dir"])
        if checkpoint is None:
            seed_everything(settings["seed"])  # before anything draws: init, dropout, data order
            self.data = build_data(settings)
        else:  # the same normalisation as before, not recomputed
            self.data = build_data(settings, mean=checkpoint["meta"]["mean"], std=checkpoint["meta"]["std"])
        self.num_classes = len(self.data.classes)
        self.model = build_net(settings, self.num_classes)
        if checkpoint is None and settings.get("init_weights"):
            load_initial_weights(self.model, settings["init_weights"])
        self.optimizer = build_optimizer(settings, self.model)
        self.scheduler, self.per_iteration = build_scheduler(settings, self.optimizer,
                                                             len(self.data.train_loader))
        self.class_weights = (None if self.data.class_weights is None
                              else minigrad.Tensor(self.data.class_weights, device=self.device))
        self.epoch = 0            # epochs completed
        self.progress = None      # EpochProgress of a partly done epoch, else None
        self.best_miou = None
        if checkpoint is not None:
            self.restore(checkpoint)

    # -- checkpoints
    def meta(self):
        progress = None if self.progress is None else vars(self.progress).copy()
        return {"model": model_config(self.settings, self.num_classes), "classes": self.data.classes,
                "ignore_index": IGNORE_INDEX, "mean": self.data.mean, "std": self.data.std,
                "settings": self.settings, "epoch": self.epoch, "progress": progress,
                "best_miou": self.best_miou, "rng": capture_rng_state()}

    def save(self, name):
        save_checkpoint(self.out / name, self.meta(), self.model.state_dict(), self.optimizer.state_dict(),
                        None if self.scheduler is None else self.scheduler.state_dict(),
                        self.data.train_loader.state_dict())

    def restore(self, checkpoint):
        """Load every piece of training state; a mismatch raises CheckpointError before the model changes."""
        meta, path = checkpoint["meta"], checkpoint["path"]
        expected = model_config(self.settings, self.num_classes)
        if meta["model"] != expected:
            raise CheckpointError(f"{path}: it holds the net {meta['model']}, this run builds {expected}")
        missing = [k for k in ("optimizer", "loader") if k not in checkpoint]
        missing += [k for k in ("rng", "epoch") if k not in meta]
        if self.scheduler is not None and "scheduler" not in checkpoint:
            missing.append("scheduler")
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint (it lacks {', '.join(missing)}); "
                                  "it can be evaluated, not resumed")
        load_model_state(self.model, checkpoint["model"], source=path)
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            if self.scheduler is not None:
                resume_scheduler(self.scheduler, checkpoint["scheduler"])
            self.data.train_loader.load_state_dict(checkpoint["loader"])
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{path}: its optimizer/scheduler/loader state does not fit this run: {e}") from e
        restore_rng_state(meta["rng"])
        self.epoch, self.best_miou = int(meta["epoch"]), meta["best_miou"]
        self.progress = None if meta.get("progress") is None else EpochProgress(**meta["progress"])

    # -- logs
    def write_config(self):
        (self.out / "predictions").mkdir(parents=True, exist_ok=True)
        config = {**self.settings, "num_classes": self.num_classes, "classes": self.data.classes,
                  "mean": self.data.mean, "std": self.data.std}
        (self.out / "config.json").write_text(json.dumps(config, indent=2))

    def trim_metrics_log(self):
        """On resume, keep the lines of the epochs the checkpoint has; later ones belong to lost work."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["epoch"] <= self.epoch:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interrupt
        path.write_text("".join(line + "\n" for line in kept))

    def log_epoch(self, record):
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def save_preview(self, epoch):
        """predictions/epoch_NNN.png: rows of image | ground truth | prediction for the first val images."""
        from .predict import predict_mask
        rows = ([], [], [])
        for i in range(min(self.settings["preview_images"], len(self.data.val_set))):
            image, mask = self.data.val_set[i]
            prediction = predict_mask(self.model, image, self.data.mean, self.data.std, self.device)
            for row, picture in zip(rows, (image, mask, prediction)):
                row.append(picture)
        scale = max(1, 128 // max(rows[0][0].shape[:2]))  # enlarge small images to ~128 px
        save_png(prediction_grid(*rows, scale=scale), self.out / "predictions" / f"epoch_{epoch:03d}.png")


def train(settings, checkpoint=None):
    """Train (or continue training) as ``settings`` say; returns the records of the epochs run."""
    run = Run(settings, checkpoint)
    run.write_config()
    if checkpoint is None:
        run.save("checkpoint_last.npz")  # epoch 0: an interrupt during the first epoch can resume too
    else:
        run.trim_metrics_log()
        where = (f"epoch {run.progress.epoch}, iteration {run.progress.iterations}" if run.progress
                 else f"the end of epoch {run.epoch}")
        print(f"resumed from {checkpoint['path']} at {where}", flush=True)
    history, finished = [], False
    with StopRequest() as stop:
        try:
            for epoch in range(run.epoch + 1, settings["epochs"] + 1):
                finished = False
                record = run_epoch(run, epoch, stop)
                if record is None:  # first Ctrl-C: the state is at a step boundary, save it
                    run.save("checkpoint_last.npz")
                    raise KeyboardInterrupt
                finished = True     # a clean epoch boundary until the checkpoints are on disk
                finish_epoch(run, record)
                finished = False
                history.append(record)
        except KeyboardInterrupt:
            if finished:  # the interrupt hit the end-of-epoch saving: save that epoch again
                run.save("checkpoint_last.npz")
            where = (f"epoch {run.progress.epoch}, iteration {run.progress.iterations}" if run.progress
                     else f"the end of epoch {run.epoch}")
            print(f"\ninterrupted: {run.out / 'checkpoint_last.npz'} holds the state at {where}; continue with\n"
                  f"  python -m segnets.train --resume {run.out / 'checkpoint_last.npz'}", file=sys.stderr, flush=True)
            raise
    return history


def run_epoch(run, epoch, stop):
    """Train one epoch, step the per-epoch schedule, evaluate; the epoch's record, or None if stopped."""
    if run.progress is None or run.progress.epoch != epoch:
        run.progress = EpochProgress(epoch, lr=current_lr(run.optimizer))
    start, first_iteration = time.perf_counter(), run.progress.iterations
    if not train_one_epoch(run, run.progress, stop):
        return None
    train_seconds = time.perf_counter() - start
    images = (run.progress.iterations - first_iteration) * run.data.train_loader.batch_size
    if run.scheduler is not None and not run.per_iteration:
        run.scheduler.step()
    metrics = evaluate(run.model, run.data.val_loader, run.num_classes, run.device)
    train_loss, lr = run.progress.mean_loss, run.progress.lr
    run.epoch, run.progress = epoch, None
    return {"epoch": epoch, "train_loss": train_loss, "lr": lr, "seconds": time.perf_counter() - start,
            "images_per_second": images / train_seconds, "val": metrics}


def finish_epoch(run, record):
    """Log the epoch, draw its predictions, write checkpoint_best (on a new best mIoU) and checkpoint_last."""
    miou = record["val"]["miou"]
    is_best = miou is not None and (run.best_miou is None or miou > run.best_miou)
    if is_best:
        run.best_miou = miou
    run.log_epoch(record)
    run.save_preview(record["epoch"])
    if is_best:
        run.save("checkpoint_best.npz")
    run.save("checkpoint_last.npz")
    print(epoch_summary(record, run.settings["epochs"], run.best_miou), flush=True)


def epoch_summary(record, epochs, best):
    val = record["val"]
    number = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return (f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
            f"val pixel acc {number(val['pixel_acc'])}  mIoU {number(val['miou'])} (best {number(best)})  "
            f"{record['seconds']:.1f} s  {record['images_per_second']:.1f} img/s")


def evaluate_only(settings, checkpoint=None):
    """--eval-only: val metrics (table + eval_val.json) of the checkpoint's weights, else the
    --init-weights file's, else the untrained net's."""
    if checkpoint is None:
        seed_everything(settings["seed"])
        data = build_data(settings)
    else:
        data = build_data(settings, mean=checkpoint["meta"]["mean"], std=checkpoint["meta"]["std"])
    model = build_net(settings, len(data.classes))
    if checkpoint is not None:
        load_model_state(model, checkpoint["model"], source=checkpoint["path"])
    elif settings.get("init_weights"):
        load_initial_weights(model, settings["init_weights"])
    matrix = confusion_matrix(model, data.val_loader, len(data.classes), settings["device"])
    print(matrix.format_table(data.classes))
    out = Path(settings["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    metrics = metrics_dict(matrix)
    (out / "eval_val.json").write_text(json.dumps({"classes": data.classes, **metrics}, indent=2))
    return metrics


if __name__ == "__main__":
    sys.exit(main())
