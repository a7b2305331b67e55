"""One training run: its objects (data, net, optimizer, schedule), its state and the files it writes.

``Run(settings, checkpoint)`` builds everything a run trains with (``build_data``,
``build_net``, ``build_optimizer``, ``build_scheduler``) and, when resuming, loads
every piece of state from the checkpoint (``Run.restore``). ``Run.save`` writes a
checkpoint (model, optimizer, scheduler, the loader's position, every random state:
``capture_rng_state``), and ``write_config``, ``log_epoch`` and ``save_preview``
write the run's other files. ``EpochProgress`` is how far the current epoch has got
and ``StopRequest`` turns the first Ctrl-C / SIGTERM into a request to stop after
the current step.

The run folder. A run writes only into a folder that is new, empty, or holds its
own files (the ``run_id`` in config.json says whose they are): ``check_output_dir``
refuses any other before anything is built, unless ``--overwrite`` asks to delete
the other run's files (it lists them). The default folder
``runs/<net>-<dataset>-<time>`` is created with ``os.mkdir``, which fails if it
exists, so two runs started in the same second get ``...-<time>`` and
``...-<time>-2``; an explicit folder is claimed by creating its config.json
exclusively.
"""
import json
import random
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minigrad
from minigrad import backend

from .checkpoint import CheckpointError, load_model_state, read_meta, read_weights, save_checkpoint
from .data.base import IGNORE_INDEX
from .distributed import Cluster
from .evaluate import eval_batch_size
from .recipes import SettingsError
from .settings import RESUME_OVERRIDABLE, check_writable_folder
from .plots import write_curves
from .visualize import prediction_grid, save_png


class Run:
    """The objects of one training run, its checkpoints and the files it writes."""

    def __init__(self, settings, checkpoint=None, cluster=None):
        self.settings = settings
        self.cluster = cluster if cluster is not None else Cluster()  # one process unless launched as several
        self.device = backend.normalize_device(settings["device"])
        self.out = None if settings["output_dir"] is None else Path(settings["output_dir"])
        if checkpoint is None:
            seed_everything(settings["seed"])  # before anything draws: init, dropout, data order
            self.data = build_data(settings, cluster=self.cluster)
        else:  # the same normalisation as before, not recomputed
            self.data = build_data(settings, mean=checkpoint["meta"]["mean"], std=checkpoint["meta"]["std"],
                                   cluster=self.cluster)
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

    # -- the run folder and its logs
    def open_output_dir(self, plan, checkpoint=None):
        """Make the output folder this run's (``plan`` from ``check_output_dir``) and write config.json;
        when resuming, trim metrics.jsonl to the checkpoint's epoch, or carry the history over into a new folder."""
        self.out = claim_output_dir(self.settings, plan)
        source = None if checkpoint is None else Path(checkpoint["path"]).resolve().parent
        if source is not None and not plan.own and source != self.out.resolve():
            carry_history(source, self.out, self.epoch, self.settings)
            self.settings["run_id"] = uuid.uuid4().hex  # the branch is a run of its own from here on
        self.write_config()
        if source is not None and (plan.own or source == self.out.resolve()):
            self.trim_metrics_log()

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
        kept, dropped = [], []
        for line in path.read_text().splitlines():
            epoch = _epoch_of(line)
            if epoch is not None:  # else a line cut short by an interrupt
                (kept if epoch <= self.epoch else dropped).append(line)
        if dropped:
            print(f"{path}: dropped the lines of epochs {_epoch_of(dropped[0])}-{_epoch_of(dropped[-1])}, "
                  f"later than the checkpoint (epoch {self.epoch})", file=sys.stderr, flush=True)
        path.write_text("".join(line + "\n" for line in kept))

    def log_epoch(self, record):
        """Append the epoch to metrics.jsonl and redraw curves.png from the whole file."""
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        write_curves(self.out)

    def log_tensorboard(self, record, grid=None):
        """With --tensorboard: the epoch's scalars and prediction grid as TensorBoard events in the run folder."""
        if not self.settings.get("tensorboard"):
            return
        if getattr(self, "tensorboard", None) is None:
            from .tensorboard_log import TensorBoardLog
            self.tensorboard = TensorBoardLog(self.out, self.data.classes)
        self.tensorboard.log_epoch(record, grid)

    def close_logs(self):
        """Close the TensorBoard writer (its events are flushed after every epoch anyway)."""
        if getattr(self, "tensorboard", None) is not None:
            self.tensorboard.close()
            self.tensorboard = None

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
        grid = prediction_grid(*rows, scale=scale)
        save_png(grid, self.out / "predictions" / f"epoch_{epoch:03d}.png")
        return grid


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


def build_data(settings, mean=None, std=None, cluster=None):
    """Datasets, normalisation, transforms and loaders; mean/std from the training images unless given.

    With a ``cluster`` of several processes the loaders give this rank's share (segnets/distributed.py)."""
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
    shared = sorted(set(_item_names(train_set)) & set(_item_names(val_set)))
    if shared:
        raise SettingsError(f"--dataset {name} (data dir {settings['data_dir']}): {len(shared)} of the "
                            f"{len(val_set)} val images are in the training split too ({', '.join(shared[:5])}"
                            f"{', ...' if len(shared) > 5 else ''}); the val metrics would be measured on "
                            "trained-on images: make train.txt and val.txt disjoint")
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
                              transform=train_transform, seed=settings["seed"], prefetch=settings["prefetch"],
                              **(cluster.loader_options() if cluster else {}))
    val_loader = DataLoader(val_set, batch_size=eval_batch_size(name, settings["batch_size"]),
                            transform=val_transform, seed=settings["seed"],
                            **(cluster.loader_options(evaluation=True) if cluster else {}))
    weights = None
    if settings["class_weights"] == "median-freq":
        weights = median_frequency_weights(train_set, train_set.num_classes)
    return Data(train_set, val_set, train_loader, val_loader, list(train_set.classes), mean, std, weights)


def _item_names(dataset):
    """The file stems of a file dataset's items (folder: stems, VOC: ids); none for generated data."""
    return list(getattr(dataset, "stems", None) or getattr(dataset, "ids", None) or [])


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


# ---------------------------------------------------------------------------- the run folder
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint_last.npz", "checkpoint_best.npz", "eval_val.json",
             "curves.png")


@dataclass
class OutputPlan:
    """What ``check_output_dir`` found: the files ``--overwrite`` deletes, and whether the folder is the run's own."""
    replaced: list
    own: bool = False


def run_files(folder):
    """The files a segnets run writes that exist in ``folder`` (names relative to it)."""
    folder = Path(folder)
    found = [name for name in RUN_FILES if (folder / name).exists()]
    if (folder / "predictions").is_dir():
        found += [f"predictions/{p.name}" for p in sorted((folder / "predictions").glob("epoch_*.png"))]
    found += sorted(p.name for p in folder.glob("events.out.tfevents.*"))  # --tensorboard
    return found


def read_config(folder):
    """The config.json of the run in ``folder`` as a dict, or None (missing or unreadable)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def same_run(config, settings):
    """Whether a run folder's ``config`` was written by the run whose settings these are.

    By ``run_id``; runs from before run ids by every setting a resume cannot change.
    """
    if config is None:
        return False
    if "run_id" in config or "run_id" in settings:
        return config.get("run_id") == settings.get("run_id")
    return all(config.get(k) == v for k, v in settings.items() if k not in RESUME_OVERRIDABLE)


def logged_epochs(folder):
    """The epochs of the lines of ``folder``/metrics.jsonl ([] if there is none)."""
    try:
        lines = (Path(folder) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [e for e in map(_epoch_of, lines) if e is not None]


def _epoch_of(line):
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError):
        return None


def _describe_run(folder, files):
    config = read_config(folder) or {}
    epochs = logged_epochs(folder)
    what = (f"{config.get('net', '?')} on {config.get('dataset', '?')}, {len(epochs)} epoch(s) logged"
            if config else "no readable config.json")
    shown = ", ".join(files[:6]) + (f", ... ({len(files)} files)" if len(files) > 6 else "")
    return f"another run's files ({what}): {shown}"


def check_output_dir(settings, checkpoint=None, overwrite=False, eval_only=False):
    """Vet the output folder before anything is built or written; returns an OutputPlan.

    Refused with SettingsError: a path that is a file or under one, a folder that
    cannot be written, and a folder holding another run's files (unless
    ``overwrite``: then the plan lists them for deletion). Resuming into the
    run's own folder from an earlier checkpoint than its checkpoint_last.npz would
    drop the later epochs: refused too, unless ``overwrite``.
    """
    if settings["output_dir"] is None:
        return OutputPlan([])  # a new folder, made when the run starts
    out = Path(settings["output_dir"])
    flag = f"the output folder {out}"
    check_writable_folder(out, "--output-dir")
    files = run_files(out) if out.is_dir() else []
    if not files:
        return OutputPlan([])
    if checkpoint is not None and same_run(read_config(out), settings):
        if not eval_only:
            _check_no_later_epochs(out, checkpoint, overwrite)
        return OutputPlan([], own=True)
    if not overwrite:
        advice = ("choose another folder, continue that run with --resume "
                  f"{out / 'checkpoint_last.npz'}, or pass --overwrite to delete them first")
        raise SettingsError(f"{flag} holds {_describe_run(out, files)}; {advice}")
    return OutputPlan(["eval_val.json"] if eval_only and "eval_val.json" in files else ([] if eval_only else files))


def _check_no_later_epochs(out, checkpoint, overwrite):
    """Resuming a run in its own folder from an older checkpoint (say checkpoint_best.npz) drops later work."""
    epoch = int(checkpoint["meta"].get("epoch", 0))
    last = out / "checkpoint_last.npz"
    later = [e for e in logged_epochs(out) if e > epoch]
    if Path(checkpoint["path"]).resolve() == last.resolve():
        return  # lines past checkpoint_last are an interrupted epoch's lost work: trim_metrics_log says so
    last_meta = read_meta(last) if last.exists() else None
    last_where = None
    if last_meta is not None and (int(last_meta.get("epoch", 0)), bool(last_meta.get("progress"))) > (epoch, False):
        last_where = f"epoch {last_meta['epoch']}" + (" and part of the next" if last_meta.get("progress") else "")
    if not later and last_where is None:
        return
    lost = []
    if later:
        lost.append(f"metrics.jsonl loses epochs {later[0]}-{later[-1]}")
    if last_where:
        lost.append(f"checkpoint_last.npz (at {last_where}) is replaced")
    message = (f"--resume {checkpoint['path']} continues from epoch {epoch} in {out}, where the run went further: "
               + " and ".join(lost))
    if not overwrite:
        raise SettingsError(message + "; pass --overwrite to do that, or --output-dir NEW to branch into a "
                                      "new folder (the history up to that epoch is carried over)")
    print(f"--overwrite: {message}", file=sys.stderr, flush=True)


def claim_output_dir(settings, plan, marker="config.json"):
    """Create (or take) the run folder and return it; settings["output_dir"] is set to it.

    None: a new folder ``runs/<net>-<dataset>-<time>``, with ``-2``, ``-3``, ... when
    that exists (``os.mkdir`` is atomic, so simultaneous runs never share one).
    A given folder: the files in ``plan.replaced`` are deleted (and listed), then
    ``marker`` (config.json; None for --eval-only, which writes only eval_val.json)
    is created exclusively unless the folder is the run's own.
    """
    try:
        if settings["output_dir"] is None:
            out = _new_default_folder(settings)
            settings["output_dir"] = str(out)
            return out
        out = Path(settings["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        if plan.replaced:
            _delete_run_files(out, plan.replaced)
        if marker is not None and not plan.own:
            with open(out / marker, "x"):
                pass
    except FileExistsError as e:
        raise SettingsError(f"--output-dir {settings['output_dir']}: another run has just started writing "
                            f"into it ({e.filename} appeared); choose another folder") from e
    except OSError as e:
        raise SettingsError(f"--output-dir {settings['output_dir']}: cannot write there: "
                            f"{e.strerror or e} ({e.filename or ''})") from e
    return out


def _new_default_folder(settings):
    base = Path("runs") / f"{settings['net']}-{settings['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10000):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise SettingsError(f"{base.parent}: no free folder name for {base.name}; pass --output-dir")


def _delete_run_files(out, names):
    for name in names:
        (out / name).unlink(missing_ok=True)
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} files)" if len(names) > 8 else "")
    print(f"--overwrite: deleted the earlier run's files in {out}: {shown}", file=sys.stderr, flush=True)


def carry_history(source, out, epoch, settings):
    """Resuming into a new folder: copy the history up to ``epoch`` from the checkpoint's folder
    (metrics.jsonl lines, checkpoint_best.npz if not later, previews), and say what was carried."""
    import shutil
    carried, missing = [], []
    if not same_run(read_config(source), settings):
        print(f"note: {source} is not the folder of this run (no matching config.json): no history carried "
              f"over; {out / 'metrics.jsonl'} starts at epoch {epoch + 1}", file=sys.stderr, flush=True)
        return
    lines = [line for line in _read_lines(source / "metrics.jsonl") if (_epoch_of(line) or epoch + 1) <= epoch]
    if lines:
        (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
        carried.append(f"metrics.jsonl (epochs {_epoch_of(lines[0])}-{_epoch_of(lines[-1])})")
    else:
        missing.append(f"metrics.jsonl starts at epoch {epoch + 1}")
    best = read_meta(source / "checkpoint_best.npz") if (source / "checkpoint_best.npz").exists() else None
    if best is not None and int(best.get("epoch", 0)) <= epoch:
        shutil.copy2(source / "checkpoint_best.npz", out / "checkpoint_best.npz")
        carried.append(f"checkpoint_best.npz (epoch {best['epoch']})")
    else:
        missing.append("no checkpoint_best.npz until val mIoU beats the checkpoint's best")
    previews = [p for p in sorted((source / "predictions").glob("epoch_*.png"))
                if p.stem[6:].isdigit() and int(p.stem[6:]) <= epoch]
    (out / "predictions").mkdir(exist_ok=True)
    for preview in previews:
        shutil.copy2(preview, out / "predictions" / preview.name)
    if previews:
        carried.append(f"{len(previews)} previews")
    print(f"resuming into a new folder {out}: carried over from {source}: {', '.join(carried) or 'nothing'}"
          + (f"; {'; '.join(missing)}" if missing else ""), flush=True)


def _read_lines(path):
    try:
        return path.read_text().splitlines()
    except OSError:
        return []
