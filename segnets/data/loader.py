"""DataLoader: batches of (images float32 (N, C, H, W), masks int64 (N, H, W)), resumable.

Randomness: one NumPy Generator seeded with ``seed``. At the start of each epoch it
draws the epoch's order (when ``shuffle``) and one augmentation seed; item ``k`` of
the epoch is transformed with a generator seeded by ``(augmentation seed, k)``. So a
batch's content depends only on (generator state at the epoch's start, batch index),
never on how far a prefetch thread has run ahead, and ``state_dict()`` is just that
state, the epoch number and the number of batches handed out.

Resume: ``load_state_dict(state)`` makes the next ``iter()`` continue that epoch at
the next batch not yet handed out, then carry on with later epochs exactly as the
uninterrupted run would have. A batch counts as handed out once the loop received
it. The same holds within one process: each ``iter()`` yields from the current
position to the end of the current epoch, so after a ``break`` the next ``iter()``
finishes the epoch that was left (the state is a position, nothing else).

Data parallelism (``num_replicas`` > 1, as PyTorch's ``DistributedSampler``): every
rank draws the same epoch order from the same seed, pads it by repeating its start to
a multiple of ``num_replicas`` and takes every ``num_replicas``-th position from
``rank`` on, so all ranks make the same number of steps and the ranks' batch ``k``
together hold exactly the items (and augmentations: the generator is seeded by the
global position) of batch ``k`` of one process with ``num_replicas`` times the batch.
``drop_last`` drops the last incomplete *global* batch. ``pad=False`` takes the share
without repeats (evaluation: every item counted once; ranks may get one batch fewer).
A state saved with another ``num_replicas`` loads at an epoch boundary, or mid-epoch
where the items handed out fill whole new global batches (another ``batch_size`` with
the same ``num_replicas`` is refused, as it would not repeat the same batches).

Batching differently sized images: use ``EvalTransform(size=...)`` or
``EvalTransform(multiple=...)`` (pads with ignore) or ``batch_size=1`` for validation;
otherwise stacking raises an error naming the sizes.
"""
import copy
import queue
import threading
import weakref

import numpy as np

from minigrad.backend import normalize_device, to_device


def default_transform(image, mask, rng=None):
    """No augmentation: uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]; the mask as int64."""
    return (np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0),
            np.asarray(mask, dtype=np.int64))


class DataLoader:
    def __init__(self, dataset, batch_size, shuffle=False, transform=None, seed=0, drop_last=False,
                 prefetch=0, device="cpu", num_replicas=1, rank=0, pad=True):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        if len(dataset) == 0:
            raise ValueError(f"DataLoader: the dataset {dataset!r} is empty")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.transform = transform or default_transform
        self.prefetch, self.device = int(prefetch), normalize_device(device)
        self.seed = seed
        if int(num_replicas) < 1 or not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"DataLoader: need num_replicas >= 1 and 0 <= rank < num_replicas, got "
                             f"num_replicas={num_replicas!r}, rank={rank!r}")
        self.num_replicas, self.rank, self.pad = int(num_replicas), int(rank), bool(pad)
        self._rng = np.random.default_rng(seed)
        self.epoch = 0                     # the epoch in progress, or the next one
        self._batch = 0                    # batches of that epoch handed out
        self._epoch_state = self._rng.bit_generator.state
        self._active = None                # the live iterator, closed when a new one starts
        if len(self) == 0:
            raise ValueError(f"DataLoader: {len(dataset)} items with batch_size={batch_size} and "
                             "drop_last=True give no batch")

    def __len__(self):
        return self._num_batches(len(self.dataset), self.batch_size, self.num_replicas, self.drop_last)

    def _num_batches(self, items, batch_size, replicas, drop_last):
        if drop_last:
            return items // (batch_size * replicas)
        return -(-len(self._positions(items, replicas)) // batch_size)

    def _positions(self, items=None, replicas=None):
        """This rank's positions in the (padded) epoch order."""
        items = len(self.dataset) if items is None else items
        replicas = self.num_replicas if replicas is None else replicas
        total = -(-items // replicas) * replicas if self.pad else items
        return range(min(self.rank, total), total, replicas)

    # ---------------------------------------------------------------- resume
    def state_dict(self):
        """JSON-able: generator state at the current epoch's start, epoch, batches handed out."""
        return {"rng_state": copy.deepcopy(self._epoch_state), "epoch": self.epoch, "batch": self._batch,
                "num_items": len(self.dataset), "batch_size": self.batch_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "num_replicas": self.num_replicas}

    def load_state_dict(self, state):
        expected = {"num_items": len(self.dataset), "shuffle": self.shuffle, "drop_last": self.drop_last}
        for key, mine in expected.items():
            if key in state and state[key] != mine:
                raise ValueError(f"DataLoader.load_state_dict: the state has {key}={state[key]!r} but this "
                                 f"loader has {key}={mine!r}; resuming would not repeat the same batches")
        batch = int(state["batch"])
        old_size, old_replicas = state.get("batch_size", self.batch_size), state.get("num_replicas", 1)
        if old_replicas == self.num_replicas and old_size != self.batch_size:
            raise ValueError(f"DataLoader.load_state_dict: the state has batch_size={old_size!r} but this loader "
                             f"has batch_size={self.batch_size!r}; resuming would not repeat the same batches")
        if old_replicas != self.num_replicas:  # another world size: the same items, re-sharded
            batch = self._rebatched(batch, old_size, old_replicas)
        self._close_active()
        self._epoch_state = copy.deepcopy(state["rng_state"])
        self.epoch, self._batch = int(state["epoch"]), batch

    def _rebatched(self, batch, old_size, old_replicas):
        """The position in this loader's batches of a state saved with another batch size or replica count."""
        old_len = self._num_batches(len(self.dataset), old_size, old_replicas, self.drop_last)
        if batch == 0 or batch >= old_len:
            return 0 if batch == 0 else len(self)  # an epoch boundary
        handed_out, new_global = batch * old_size * old_replicas, self.batch_size * self.num_replicas
        if handed_out % new_global:
            raise ValueError(f"DataLoader.load_state_dict: the state is {batch} batches of {old_size} x "
                             f"{old_replicas} replica(s) into an epoch ({handed_out} items), not a whole number "
                             f"of batches of {self.batch_size} x {self.num_replicas}; resume from a checkpoint "
                             "saved at the end of an epoch")
        return handed_out // new_global

    # ---------------------------------------------------------------- iteration
    def __iter__(self):
        self._close_active()
        if self._batch >= len(self):  # a saved state whose epoch had been fully handed out
            self._finish_epoch()
        iterator = self._iterate()
        self._active = weakref.ref(iterator)  # weak: a `break` closes it (and its prefetch thread) at once
        return iterator

    def _iterate(self):
        order, augment_seed = self._plan_epoch()
        start = self._batch
        batches = self._prefetched(order, augment_seed, start) if self.prefetch > 0 else (
            self._load_batch(order, augment_seed, b) for b in range(start, len(self)))
        try:
            for batch in batches:
                self._batch += 1
                yield batch
        finally:
            batches.close()
        self._finish_epoch()

    def _plan_epoch(self):
        """Restore the epoch's starting state and draw its order and augmentation seed."""
        self._rng.bit_generator.state = self._epoch_state
        items = len(self.dataset)
        order = self._rng.permutation(items) if self.shuffle else np.arange(items)
        augment_seed = int(self._rng.integers(0, 2**63 - 1))
        return order, augment_seed

    def _finish_epoch(self):
        """Move to the next epoch, which starts from the generator state after this epoch's draws."""
        self._plan_epoch()
        self.epoch += 1
        self._batch = 0
        self._epoch_state = self._rng.bit_generator.state

    def _close_active(self):
        """Two live iterators would both advance the position: close the older one."""
        iterator = self._active() if self._active is not None else None
        if iterator is not None:
            iterator.close()
        self._active = None

    def _load_batch(self, order, augment_seed, batch_index):
        positions = self._positions()[batch_index * self.batch_size:(batch_index + 1) * self.batch_size]
        images, masks = [], []
        for position in positions:
            image, mask = self.dataset[int(order[position % len(order)])]
            image, mask = self.transform(image, mask, np.random.default_rng([augment_seed, position]))
            images.append(image)
            masks.append(mask)
        batch = _stack(images, "images"), _stack(masks, "masks")
        return batch if self.device == "cpu" else tuple(to_device(a, self.device) for a in batch)

    def _prefetched(self, order, augment_seed, start):
        """Load batches start.. in a background thread, at most ``prefetch`` ahead."""
        slots = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            for b in range(start, len(self)):
                try:
                    item = ("batch", self._load_batch(order, augment_seed, b))
                except BaseException as e:  # handed to the consumer, raised there
                    item = ("error", e)
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set() or item[0] == "error":
                    return

        worker = threading.Thread(target=produce, name="DataLoader-prefetch", daemon=True)
        worker.start()
        try:
            for _ in range(start, len(self)):
                kind, value = slots.get()
                if kind == "error":
                    raise value
                yield value
        finally:
            stop.set()
            worker.join()


def _stack(arrays, what):
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"DataLoader: cannot batch {what} of different sizes {sorted(shapes)}; pad them to one "
                         "size with EvalTransform(size=...) or EvalTransform(multiple=...), or use batch_size=1")
    return np.stack(arrays)
