"""Train a segmentation net: ``python -m segnets.train --net deconvnet --device cpu``.

A training step, from the command line down to im2col (file, then function):

    train.py     main(argv)                   parse flags, check --device
    settings.py    resolve_settings(args)     settings = recipe of --net with the flags on top
                                              (with --resume: the checkpoint's settings)
    train.py       train(settings)
    run.py           check_output_dir()       refuse a folder holding another run's files (before any work)
                     Run.__init__()           the run's objects, built from the settings:
                       build_data()           datasets -> mean/std -> TrainTransform -> DataLoaders
                       build_net()            segnets.build_model -> minigrad.nn modules
                       build_optimizer()      SGD / Adam / AdamW over the parameters that require grad
                       build_scheduler()      constant / step / poly / cosine
                       restore()              with --resume: every piece of state from the checkpoint
                     Run.open_output_dir()    claim the folder (atomically), write config.json
    train.py         for each epoch: run_epoch(run, epoch, stop)
                       train_one_epoch()      for each batch of run.data.train_loader:
    evaluate.py          to_tensor(images)      the batch as a minigrad.Tensor on run.device
    train.py             compute_loss()         logits = model(images); F.cross_entropy(logits,
                                                masks, weight=class weights, ignore_index=255)
    models/*.py            model(images)        e.g. UNet.forward -> DoubleConv.forward -> self.conv1(x)
    minigrad/nn/conv.py      Conv2d.forward     F.conv2d(input, self.weight, self.bias, ...)
    minigrad/functional/conv.py
                               conv2d()         _conv_array: im2col, then one matmul per group
                               _columns()       im2col(x, kernel, stride, pad, dilation, out_size)
    minigrad/functional/im2col.py
                               im2col()         every window of x as columns (a strided view, one copy)
    train.py             optimizer.zero_grad(); loss.backward(); optimizer.step()
                         scheduler.step()       per iteration for "poly" (DeepLab's schedule)
                       scheduler.step()       per epoch for "step" and "cosine"
    evaluate.py        evaluate()             one confusion matrix over the whole val split
    train.py         finish_epoch()           metrics.jsonl, predictions/epoch_NNN.png,
                                              checkpoint_best/last.npz (Run.log_epoch, save_preview, save)

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

Data parallelism: ``mpiexec -n N python -m segnets.train ...`` runs the same loop on N
processes, each on its share of every global batch (segnets/distributed.py: Cluster).
"""
import json
import math
import sys
import time

from tqdm import tqdm

import minigrad
import minigrad.functional as F

from .checkpoint import CheckpointError, load_model_state
from .distributed import Cluster
from .evaluate import confusion_matrix, evaluate, metrics_dict, to_tensor
from .models.common import center_crop
from .recipes import SettingsError
from .run import (IGNORE_INDEX, EpochProgress, Run, StopRequest, build_data, build_net, check_output_dir,
                  claim_output_dir, current_lr, load_initial_weights, seed_everything)
from .settings import build_parser, check_device, resolve_settings


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the message names the step, the likely cause and what is saved."""

    def __init__(self, epoch, iteration, value, saved_epoch=0, unlabelled=False, lr=None):
        cause = ("no pixel of this batch's masks is labelled (all are the ignore value 255)" if unlabelled
                 else f"the training diverged (a smaller --lr than {lr:g}?)" if lr is not None else "")
        saved = (f"checkpoint_last.npz still holds the end of epoch {saved_epoch}" if saved_epoch
                 else "no epoch had finished; checkpoint_last.npz holds the state before training")
        super().__init__(f"loss is {value} at epoch {epoch}, iteration {iteration}"
                         + (f": {cause}" if cause else "") + f"; training stopped before this step's update "
                         f"({saved})")
        self.epoch, self.iteration, self.value = epoch, iteration, value


class StoppedAtStep(KeyboardInterrupt):
    """The first Ctrl-C / SIGTERM: every rank stopped after the same step and checkpoint_last.npz is saved."""


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        cluster = Cluster.from_launch(args.distributed)  # one process, or this rank of an mpiexec launch
    except SettingsError as e:
        if Cluster.launcher_rank() == 0:  # no MPI to stop the others: every rank exits, one says why
            print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        check_device(args.device or "cpu")
    except RuntimeError as e:
        return cluster.fail(e, 2)
    if args.threads is not None:
        minigrad.set_num_threads(args.threads)
    try:
        settings, checkpoint = resolve_settings(args)
        cluster.start(settings, checkpoint)
        if args.eval_only:
            if cluster.world_size > 1:
                raise SettingsError("--eval-only runs in one process: launch it without mpiexec -n N")
            evaluate_only(settings, checkpoint, overwrite=args.overwrite)
        else:
            train(settings, checkpoint, overwrite=args.overwrite, cluster=cluster)
    except (SettingsError, CheckpointError) as e:
        return cluster.fail(e, 2)  # with several ranks: printed once, every rank stopped
    except NonFiniteLoss as e:
        return cluster.fail(e, 1)
    except KeyboardInterrupt as e:  # train() has already said what was saved
        # a stop all ranks agreed on (after saving) ends normally; any other interrupt stops every rank at once
        return 130 if isinstance(e, StoppedAtStep) else cluster.abort(130)
    cluster.finish()
    return 0


def train(settings, checkpoint=None, overwrite=False, cluster=None):
    """Train (or continue training) as ``settings`` say; returns the records of the epochs run.

    ``overwrite``: the output folder may hold another run's files, which are deleted.
    ``cluster``: the processes of a data-parallel run (segnets/distributed.py); rank 0 writes the files.
    """
    cluster = cluster if cluster is not None else Cluster()
    # before any work: a refused folder costs nothing
    plan = check_output_dir(settings, checkpoint, overwrite) if cluster.is_main else None
    run = Run(settings, checkpoint, cluster)
    cluster.wrap(run)
    if cluster.is_main:
        run.open_output_dir(plan, checkpoint)
    cluster.share_output_dir(run)
    if checkpoint is None:
        save(run, "checkpoint_last.npz")  # epoch 0: an interrupt during the first epoch can resume too
    else:
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
                    save(run, "checkpoint_last.npz")
                    raise StoppedAtStep
                finished = True     # a clean epoch boundary until the checkpoints are on disk
                finish_epoch(run, record)
                finished = False
                history.append(record)
        except KeyboardInterrupt:
            if finished and cluster.is_main:  # the interrupt hit the end-of-epoch saving: save that epoch again
                run.save("checkpoint_last.npz")
            where = (f"epoch {run.progress.epoch}, iteration {run.progress.iterations}" if run.progress
                     else f"the end of epoch {run.epoch}")
            print(f"\ninterrupted: {run.out / 'checkpoint_last.npz'} holds the state at {where}; continue with\n"
                  f"  python -m segnets.train --resume {run.out / 'checkpoint_last.npz'}", file=sys.stderr, flush=True)
            raise
    run.close_logs()
    return history


def save(run, name):
    """Checkpoint ``name``, written (atomically) by rank 0 alone; every rank waits until it is on disk."""
    if run.cluster.is_main:
        run.save(name)
    run.cluster.barrier()


# ---------------------------------------------------------------------------- one epoch
def run_epoch(run, epoch, stop):
    """Train one epoch, step the per-epoch schedule, evaluate; the epoch's record, or None if stopped."""
    if run.progress is None or run.progress.epoch != epoch:
        run.progress = EpochProgress(epoch, lr=current_lr(run.optimizer))
    start, first_iteration = time.perf_counter(), run.progress.iterations
    if not train_one_epoch(run, run.progress, stop):
        return None
    train_seconds = time.perf_counter() - start
    images = (run.progress.iterations - first_iteration) * run.data.train_loader.batch_size * run.cluster.world_size
    if run.scheduler is not None and not run.per_iteration:
        run.scheduler.step()
    metrics = evaluate(run.model, run.data.val_loader, run.num_classes, run.device)
    train_loss, lr = run.progress.mean_loss, run.progress.lr
    run.epoch, run.progress = epoch, None
    return {"epoch": epoch, "train_loss": train_loss, "lr": lr, "seconds": time.perf_counter() - start,
            "images_per_second": images / train_seconds, "val": metrics}


def train_one_epoch(run, progress, stop):
    """Train over the rest of the epoch (all of it unless resuming mid-epoch); False if stopped by Ctrl-C."""
    loader, epochs, cluster = run.data.train_loader, run.settings["epochs"], run.cluster
    run.model.train()
    global_batch = loader.batch_size * cluster.world_size  # the bar counts the images of all ranks
    bar = tqdm(total=len(loader) * global_batch, initial=progress.iterations * global_batch,
               desc=f"epoch {progress.epoch}/{epochs}", unit="img", leave=False, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30,  # logs: few updates
               disable=not cluster.is_main)
    if cluster.any(stop.requested):  # Ctrl-C came during the last evaluation or saving
        bar.close()
        return False
    try:
        for images, masks in loader:  # the loader counts a batch as done once handed out: stop only after a step
            images, masks = to_tensor(images, run.device), to_tensor(masks, run.device)
            loss = compute_loss(run.model, images, masks, run.class_weights, cluster)
            value = cluster.mean(loss.item())  # the global batch's loss (ranks' batches are equal)
            if not math.isfinite(value):
                unlabelled = bool((masks.data == IGNORE_INDEX).all())
                raise NonFiniteLoss(progress.epoch, progress.iterations + 1, value, saved_epoch=run.epoch,
                                    unlabelled=unlabelled, lr=run.settings["lr"])
            run.optimizer.zero_grad()
            loss.backward()
            run.optimizer.step()
            if run.per_iteration:
                run.scheduler.step()
            progress.iterations += 1
            progress.loss_sum += value
            bar.update(images.shape[0] * cluster.world_size)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{current_lr(run.optimizer):.2e}")
            if cluster.any(stop.requested):  # every rank stops after the same step
                return False
    finally:
        bar.close()
    return True


def compute_loss(model, images, masks, class_weights, cluster=None):
    """Forward pass and the pixel-wise cross-entropy (255 ignored), masks cropped to the logits' size.

    A net with an auxiliary head (``has_aux``: DeepLab v3 and PSPNet with ``aux_loss=True``)
    adds ``model.aux_weight`` times its head's cross-entropy, in training mode only.
    """
    if getattr(model, "has_aux", False) and model.training:
        logits, aux = model.forward_with_aux(images)
    else:
        logits, aux = model(images), None
    target = center_crop(masks, logits.shape[-2:])
    loss = pixel_loss(logits, target, class_weights, cluster)
    if aux is not None:
        aux_loss = pixel_loss(aux, target, class_weights, cluster)
        loss = loss + model.aux_weight * aux_loss
    return loss


def pixel_loss(logits, target, class_weights, cluster=None):
    """The cross-entropy averaged over the labelled pixels (255 ignored), weighted by class if asked.

    Data-parallel (a ``cluster`` of several ranks): averaged over the labelled pixels of the
    *global* batch (this rank's sum x world size / the weight of every rank's labelled pixels,
    all-reduced), so the gradients DDP averages are exactly one process's, even when the ranks'
    crops hold different numbers of ignored pixels.
    """
    if cluster is None or not cluster.enabled:
        return F.cross_entropy(logits, target, weight=class_weights, ignore_index=IGNORE_INDEX)
    labels = target.data[target.data != IGNORE_INDEX]
    weight = float(labels.size if class_weights is None else class_weights.data[labels].sum())
    total = cluster.mean(weight) * cluster.world_size
    summed = F.cross_entropy(logits, target, weight=class_weights, ignore_index=IGNORE_INDEX, reduction="sum")
    return summed * (cluster.world_size / total if total else float("nan"))


def finish_epoch(run, record):
    """Log the epoch, draw its predictions, write checkpoint_best (on a new best mIoU) and checkpoint_last."""
    miou = record["val"]["miou"]
    is_best = miou is not None and (run.best_miou is None or miou > run.best_miou)
    if is_best:
        run.best_miou = miou
    if run.cluster.is_main:  # the other ranks of a data-parallel run write nothing
        run.log_epoch(record)
        run.log_tensorboard(record, run.save_preview(record["epoch"]))
    if is_best:
        save(run, "checkpoint_best.npz")
    save(run, "checkpoint_last.npz")
    print(epoch_summary(record, run.settings["epochs"], run.best_miou), flush=True)


def epoch_summary(record, epochs, best):
    val = record["val"]
    number = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return (f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
            f"val pixel acc {number(val['pixel_acc'])}  mIoU {number(val['miou'])} (best {number(best)})  "
            f"{record['seconds']:.1f} s  {record['images_per_second']:.1f} img/s")


def evaluate_only(settings, checkpoint=None, overwrite=False):
    """--eval-only: val metrics (table + eval_val.json) of the checkpoint's weights, else the
    --init-weights file's, else the untrained net's."""
    plan = check_output_dir(settings, checkpoint, overwrite, eval_only=True)
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
    out = claim_output_dir(settings, plan, marker=None)
    metrics = metrics_dict(matrix)
    (out / "eval_val.json").write_text(json.dumps({"classes": data.classes, **metrics}, indent=2))
    return metrics


if __name__ == "__main__":
    sys.exit(main())
