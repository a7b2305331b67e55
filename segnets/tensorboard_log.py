"""TensorBoard event files for ``segnets.train --tensorboard`` (written with tensorboardX, imported lazily).

Per epoch, into the run folder (``tensorboard --logdir runs/``):

* scalars ``train/loss``, ``train/lr``, ``train/images_per_second``, ``train/seconds``;
* ``val/<metric>`` for every number the evaluation gives (pixel_acc, mean_acc, miou, fwiou, ...);
* ``val_iou/<class name>``: the IoU of each class (classes absent from the split are skipped);
* the image ``predictions``: the epoch's image | ground truth | prediction grid.

The step is the epoch, so a resumed run continues the same curves.
"""
import math

INSTALL = "pip install tensorboardX (or pip install 'minigrad-segnets[tensorboard]')"


def load_writer_class():
    """tensorboardX's SummaryWriter, or an ImportError that says what to install."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(f"--tensorboard needs the tensorboardX package: {INSTALL}") from None
    return SummaryWriter


class TensorBoardLog:
    """Writes one run's scalars and prediction grids as TensorBoard events in ``folder``."""

    def __init__(self, folder, class_names=None):
        self.writer = load_writer_class()(logdir=str(folder))
        self.class_names = list(class_names or [])

    def log_epoch(self, record, grid=None):
        epoch = int(record["epoch"])
        for key, tag in (("train_loss", "train/loss"), ("lr", "train/lr"),
                         ("images_per_second", "train/images_per_second"), ("seconds", "train/seconds")):
            self._scalar(tag, record.get(key), epoch)
        val = record.get("val") or {}
        for key, value in val.items():
            if key == "per_class_iou" and isinstance(value, (list, tuple)):
                for k, iou in enumerate(value):
                    name = self.class_names[k] if k < len(self.class_names) else str(k)
                    self._scalar(f"val_iou/{name}", iou, epoch)
            else:
                self._scalar(f"val/{key}", value, epoch)
        if grid is not None:
            self.writer.add_image("predictions", grid, epoch, dataformats="HWC")
        self.writer.flush()

    def _scalar(self, tag, value, step):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if math.isfinite(value):
            self.writer.add_scalar(tag, float(value), step)

    def close(self):
        self.writer.close()
