"""Evaluate a checkpoint: ``python -m segnets.evaluate --checkpoint CKPT [--dataset ... --data-dir ...]``.

Prints the metrics table (pixel accuracy, mean accuracy, mIoU, frequency-weighted
IoU, IoU per class) and writes the same numbers as JSON. The metrics come from
one confusion matrix accumulated over the whole split (pixels labelled 255 left
out), kept on the device the model runs on; torchvision's reference does the same.

The net, its classes and its normalisation come from the checkpoint; the data
defaults to the split the checkpoint was validated on (its dataset and options).
"""
import argparse
import json
import math
import sys
from pathlib import Path

import minigrad
from minigrad import backend

from .checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
from .crf import CRF_OPT_HELP
from .data import IGNORE_INDEX, DataError, DataLoader, build_dataset
from .models.common import center_crop
from .predict import NetInputTransform, input_geometry
from .recipes import SettingsError, parse_options
from .settings import POSITIVE_INT, check_writable_file

FIXED_SIZE_DATASETS = ("shapes", "idx-scenes")  # every image the same size: batches stack


def eval_batch_size(dataset_name, batch_size):
    """Evaluation batches: ``batch_size`` where every image has one size, else 1 (VOC, folders)."""
    return batch_size if dataset_name in FIXED_SIZE_DATASETS else 1


def evaluate(model, loader, num_classes, device, ignore_index=IGNORE_INDEX):
    """Metrics of ``model`` over every batch of ``loader``: a dict of plain floats/lists (JSON-able)."""
    return metrics_dict(confusion_matrix(model, loader, num_classes, device, ignore_index))


def confusion_matrix(model, loader, num_classes, device, ignore_index=IGNORE_INDEX):
    """One ConfusionMatrix over the whole loader, counted on ``device``; the model is left in eval mode."""
    from .metrics import ConfusionMatrix
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    with minigrad.no_grad():
        for images, masks in loader:
            logits = model(to_tensor(images, device))
            target = center_crop(to_tensor(masks, device).data, logits.shape[-2:])
            matrix.update(logits.data.argmax(axis=1), target)
    if getattr(loader, "num_replicas", 1) > 1:  # this rank's share of the split: add the others'
        matrix.all_reduce()
    return matrix


def confusion_matrices_with_crf(model, loader, num_classes, device, mean, std, crf_options,
                                ignore_index=IGNORE_INDEX):
    """(the net's ConfusionMatrix, the one after segnets.crf.dense_crf on its probabilities), one pass."""
    from .crf import crf_batch
    from .metrics import ConfusionMatrix
    model.eval()
    plain, refined = (ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device) for _ in range(2))
    with minigrad.no_grad():
        for images, masks in loader:
            x = to_tensor(images, device)
            logits = model(x)
            target = center_crop(to_tensor(masks, device).data, logits.shape[-2:])
            plain.update(logits.data.argmax(axis=1), target)
            refined.update(crf_batch(x.data, logits.data, mean, std, **crf_options).argmax(axis=1), target)
    return plain, refined


def to_tensor(batch, device):
    """A loader batch (array or Tensor) as a Tensor on ``device``."""
    if isinstance(batch, minigrad.Tensor):
        return batch if batch.device == backend.normalize_device(device) else batch.to(device)
    return minigrad.Tensor(batch, device=device)


def metrics_dict(matrix):
    """{pixel_acc, mean_acc, miou, fwiou, per_class_iou}; NaN (a class seen nowhere) becomes None for JSON."""
    computed = matrix.compute()
    out = {key: _plain(computed[key]) for key in ("pixel_acc", "mean_acc", "miou", "fwiou")}
    out["per_class_iou"] = [_plain(v) for v in computed["per_class_iou"]]
    return out


def _plain(value):
    value = float(value)
    return None if math.isnan(value) else value


# ---------------------------------------------------------------------------- command line
def build_parser():
    p = argparse.ArgumentParser(prog="python -m segnets.evaluate",
                                description="Evaluate a segnets checkpoint: print the metrics table, write JSON.")
    p.add_argument("--checkpoint", required=True, help="checkpoint .npz written by segnets.train")
    p.add_argument("--dataset", help="dataset to evaluate on [default: the checkpoint's]")
    p.add_argument("--data-dir", help="its directory [default: the checkpoint's]")
    p.add_argument("--data-opt", action="append", metavar="KEY=VALUE",
                   help="dataset option, repeatable [default: the checkpoint's options]")
    p.add_argument("--split", default="val", choices=("train", "val"), help="split to evaluate [default: val]")
    p.add_argument("--batch-size", type=POSITIVE_INT, help="images per forward pass [default: 8 for shapes and "
                   "idx-scenes, 1 for datasets whose images differ in size]")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where to run [default: cpu]")
    p.add_argument("--output", help="JSON file to write [default: eval_<split>.json next to the checkpoint]")
    p.add_argument("--crf", action="store_true",
                   help="also post-process the net's probabilities with the dense CRF (segnets.crf, DeepLab's "
                        "defaults) and report the metrics before and after")
    p.add_argument("--crf-opt", action="append", metavar="KEY=VALUE",
                   help=CRF_OPT_HELP)
    p.add_argument("--confusion-png", metavar="FILE",
                   help="also draw the confusion matrix (rows: true class, columns: predicted, shaded by the "
                        "row's share) with the class names on both axes into this PNG")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        backend.xp_for(args.device)  # a missing GPU fails here, before any work
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        output = (Path(args.output) if args.output
                  else Path(args.checkpoint).resolve().parent / f"eval_{args.split}.json")
        check_writable_file(output, "--output")  # before the work, not after it
        if args.confusion_png:
            check_writable_file(Path(args.confusion_png), "--confusion-png")
        checkpoint = load_checkpoint(args.checkpoint)
        meta = checkpoint["meta"]
        dataset = dataset_for(checkpoint, args)
        model = build_model_from_checkpoint(checkpoint, device=args.device)
        transform = NetInputTransform(meta["mean"], meta["std"], input_geometry(meta["model"]))
        batch_size = args.batch_size or eval_batch_size(dataset.name, 8)
        loader = DataLoader(dataset, batch_size=batch_size, transform=transform)
        if args.crf or args.crf_opt:
            from .crf import check_options
            crf_options = check_options(parse_options(args.crf_opt, "--crf-opt"))
            matrix, crf_matrix = confusion_matrices_with_crf(model, loader, len(meta["classes"]), args.device,
                                                             meta["mean"], meta["std"], crf_options)
        else:
            matrix = confusion_matrix(model, loader, len(meta["classes"]), args.device)
    except (CheckpointError, SettingsError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(matrix.format_table(meta["classes"]))
    crf_record = {}
    if args.crf or args.crf_opt:
        before, after = metrics_dict(matrix), metrics_dict(crf_matrix)
        print(f"\nafter the dense CRF ({', '.join(f'{k}={v}' for k, v in crf_options.items()) or 'defaults'}):")
        print(crf_matrix.format_table(meta["classes"]))
        print(f"mIoU {before['miou']:.4f} -> {after['miou']:.4f} with the CRF")
        crf_record = {"crf": {"options": crf_options, **after}}
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(args.checkpoint), "dataset": dataset.name, "split": args.split,
              "epoch": meta.get("epoch"), "classes": meta["classes"], **metrics_dict(matrix), **crf_record}
    output.write_text(json.dumps(record, indent=2))
    print(f"wrote {output}")
    if args.confusion_png:
        from .plots import draw_confusion
        from .visualize import save_png
        save_png(draw_confusion(matrix.matrix, meta["classes"]), args.confusion_png)
        print(f"wrote {args.confusion_png}")
    return 0


def dataset_for(checkpoint, args):
    """The split to evaluate: the checkpoint's dataset and options, unless the flags name others."""
    meta = checkpoint["meta"]
    saved = meta.get("settings", {})
    same_dataset = args.dataset is None or args.dataset == saved.get("dataset")
    name = args.dataset or saved.get("dataset")
    if name is None:
        raise SettingsError("the checkpoint does not say which dataset it was trained on; pass --dataset")
    options = dict(saved.get("data_options", {})) if same_dataset else {}
    options.update(parse_options(args.data_opt, "--data-opt"))
    data_dir = args.data_dir if args.data_dir is not None else (saved.get("data_dir") if same_dataset else None)
    try:
        dataset = build_dataset(name, args.split, data_dir=data_dir, seed=saved.get("seed", 0), **options)
    except (TypeError, ValueError) as e:  # DataError is a ValueError; TypeError: an unknown --data-opt
        raise SettingsError(f"--dataset {name} (--data-dir {data_dir}, --data-opt {options}): {e}") from e
    if list(dataset.classes) != list(meta["classes"]):
        raise SettingsError(f"the {name} data has classes {list(dataset.classes)}, but the checkpoint's net "
                            f"was trained on {meta['classes']}")
    return dataset


if __name__ == "__main__":
    sys.exit(main())
