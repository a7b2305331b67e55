"""Checkpoints: one atomic .npz that carries everything needed to rebuild, evaluate or resume a net.

Layout (a nested dict written by ``minigrad.save``, which writes a temporary file
and renames it, so a crash or Ctrl-C mid-write leaves the previous file intact):

    meta       JSON text: format, version, model config (name, num_classes, width,
               options), classes, ignore_index, normalisation mean/std, dataset,
               the training settings, epoch (completed epochs), best val mIoU,
               and the random states (minigrad, numpy, Python)
    model      the model's state_dict (name -> array)
    optimizer  the optimizer's state_dict        (training checkpoints only)
    scheduler  the lr scheduler's state_dict     (when a scheduler is used)
    loader     the training DataLoader's state_dict

Metadata is JSON text rather than nested npz entries so that lists, None, bools
and 128-bit generator states round-trip exactly. Loading checks everything
before touching a model: a corrupt file or a mismatched net raises
``CheckpointError`` with a message that says what is wrong, and the model is
left as it was.
"""
import json
import os
import zipfile

import numpy as np

import minigrad

FORMAT = "segnets-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the net it is loaded into."""


def save_checkpoint(path, meta, model_state, optimizer_state=None, scheduler_state=None, loader_state=None):
    """Write a checkpoint atomically (``minigrad.save`` writes a temporary file, then renames it)."""
    meta = dict(meta, format=FORMAT, version=VERSION)
    payload = {"meta": json.dumps(meta, default=_json_default), "model": dict(model_state)}
    for key, state in (("optimizer", optimizer_state), ("scheduler", scheduler_state), ("loader", loader_state)):
        if state is not None:
            payload[key] = state
    minigrad.save(payload, os.fspath(path))


def load_checkpoint(path):
    """Read and check a checkpoint; returns a dict with ``meta`` (a dict) and the state dicts.

    Raises ``CheckpointError`` for a missing, truncated or foreign file.
    """
    path = os.fspath(path)
    _check_npz_file(path, "checkpoint")
    try:
        with np.load(path, allow_pickle=False) as npz:
            entries = list(npz.files)
    except Exception as e:  # a damaged zip can fail in zipfile or in numpy's header parser
        raise CheckpointError(f"cannot read checkpoint {path!r}: a damaged .npz (truncated?): {e}") from e
    if minigrad.serialization.STRUCTURE_ENTRY not in entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise CheckpointError(f"{path!r} is not a segnets checkpoint: it is a plain .npz of {len(entries)} "
                              f"array(s) ({shown or 'none'}), not a file written by segnets.train (a file of "
                              "weights like this one can start a run with --init-weights)")
    try:
        payload = minigrad.load(path)
    except Exception as e:  # zipfile/npz/json errors all mean the same thing to the user
        raise CheckpointError(f"cannot read checkpoint {path!r} (corrupt or truncated?): {e}") from e
    return _checked_checkpoint(payload, path)


def _check_npz_file(path, what):
    """CheckpointError unless ``path`` is a file that starts like an .npz (a zip archive), saying what it is."""
    if os.path.isdir(path):
        inside = sorted(name for name in os.listdir(path) if name.endswith(".npz"))
        raise CheckpointError(f"{what} {path!r} is a folder, not a file; expected an .npz file"
                              + (f" (the folder holds {', '.join(inside[:4])})" if inside else ""))
    if not os.path.exists(path):
        raise CheckpointError(f"{what} {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            start = f.read(4)
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path!r}: {e.strerror or e}") from e
    if not is_zip:
        if start.startswith(b"PK"):
            raise CheckpointError(f"cannot read {what} {path!r}: a damaged .npz (zip) file, truncated or "
                                  "cut short while it was written")
        raise CheckpointError(f"{what} {path!r} is not an .npz file (segnets checkpoints and weight files are "
                              f"zip archives, starting with 'PK'; this one starts with {start!r})")


def read_meta(path):
    """The metadata of checkpoint ``path`` without reading its arrays; None if it is not a readable checkpoint."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as npz:
            structure = json.loads(str(npz[minigrad.serialization.STRUCTURE_ENTRY][()]))
        entries = dict((key, value) for key, value in structure["root"]["dict"] if isinstance(key, str))
        meta = json.loads(entries["meta"])
    except Exception:  # noqa: BLE001 - any damage means "no metadata to read"
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _checked_checkpoint(payload, path):
    """The payload of a checkpoint file with its metadata parsed, after checking it is one."""
    if not isinstance(payload, dict) or "meta" not in payload or "model" not in payload:
        raise CheckpointError(f"{path!r} is not a segnets checkpoint (no 'meta'/'model' entries)")
    try:
        meta = json.loads(_as_text(payload["meta"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path!r} has unreadable metadata: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a segnets checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path!r} has version {meta.get('version')}, this code reads {VERSION}")
    for key in ("model", "classes", "mean", "std", "ignore_index"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path!r} lacks metadata {key!r}")
    return dict(payload, meta=meta, path=path)


def read_weights(path):
    """{name: array or Tensor} from a weights file, for ``--init-weights``.

    Accepted: a segnets checkpoint (its model), a state dict written by ``minigrad.save``,
    or a plain ``.npz`` (``np.savez(path, **state_dict)``) with segnets names or, for a
    net with a VGG16 trunk, torchvision's ``vgg16`` / ``vgg16_bn`` keys (see
    ``segnets.load_torch_state_dict``). Raises ``CheckpointError`` naming the file.
    """
    path = os.fspath(path)
    _check_npz_file(path, "weights file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if minigrad.serialization.STRUCTURE_ENTRY not in names:
                return {name: npz[name] for name in names}
        payload = minigrad.load(path)
    except Exception as e:  # not a zip, truncated, an object array, ...
        raise CheckpointError(f"cannot read weights file {path!r} (an .npz of name -> array, "
                              f"a minigrad.save'd state dict or a segnets checkpoint): {e}") from e
    if isinstance(payload, dict) and "meta" in payload:
        return dict(_checked_checkpoint(payload, path)["model"])  # name -> Tensor
    if isinstance(payload, dict) and all(isinstance(name, str) for name in payload):
        return payload
    raise CheckpointError(f"weights file {path!r} holds a {type(payload).__name__}, not a state dict "
                          f"or a segnets checkpoint")


def build_model_from_checkpoint(checkpoint, device="cpu"):
    """Rebuild the net described by the checkpoint and load its weights (eval mode, on ``device``)."""
    from . import build_model
    config = dict(checkpoint["meta"]["model"])
    name = config.pop("name")
    try:
        model = build_model(name, **config)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {checkpoint.get('path')!r}: cannot rebuild net {name!r} "
                              f"with {config}: {e}") from e
    load_model_state(model, checkpoint["model"], source=checkpoint.get("path"))
    model.to(device)
    model.eval()
    return model


def load_model_state(model, state, source="checkpoint"):
    """Load ``state`` into ``model``; on any mismatch raise CheckpointError and leave the model untouched.

    ``Module.load_state_dict`` checks every name and shape before it copies anything,
    so a mismatched checkpoint never leaves a half-loaded net.
    """
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: the weights do not fit the net {type(model).__name__}: {e}") from e


def _as_text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return str(value.item())
    return str(value)


def _json_default(value):
    """NumPy scalars/arrays in metadata become plain JSON numbers/lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint metadata")
