"""Data parallelism for ``python -m segnets.train``: ``mpiexec -n 4 python -m segnets.train ...``.

``Cluster`` is what the training command knows about the other processes: rank,
world size, and the few collective steps the run needs. One process (no
launcher, or ``--distributed none``) gets a Cluster of one, whose steps do nothing.

Under ``mpiexec`` with more than one process (``--distributed auto``, the default),
or with ``--distributed mpi|nccl``:
  * every rank builds the same run (same seed, same settings; rank 0's run id),
    takes its share of each global batch (the DataLoader's ``num_replicas``/``rank``:
    the ranks' batches together are the one-process batch of ``--batch-size`` x
    world size) and trains the net wrapped in DistributedDataParallel, with its
    batch norms converted to SyncBatchNorm: N processes of batch B train as one
    process of batch N*B does;
  * evaluation: each rank takes its share of the val split (no repeats) and the
    confusion matrices are summed, so every image counts once;
  * rank 0 alone writes files (atomically, then a barrier); the other ranks print
    nothing (their stdout and stderr go to /dev/null) except errors;
  * a Ctrl-C is agreed on by all ranks at the next step (each step all-reduces the
    stop flag), so they stop at the same step and rank 0 saves it; an error on any
    rank is printed once, naming the rank, and aborts every process (MPI_Abort).
"""
import os
import sys
import time

from minigrad import backend

from .recipes import SettingsError

MODES = ("auto", "none", "mpi", "nccl")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


class Cluster:
    """The processes of one training run; a Cluster() of one is the single-process run."""

    def __init__(self, mode="none", rank=0, world_size=1):
        self.mode, self.rank, self.world_size = mode, rank, world_size
        self.ddp = None

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.mode != "none"

    # ---------------------------------------------------------------- start
    @staticmethod
    def launcher_rank():
        """This process's rank as the MPI launcher's environment says (0 without a launcher); needs no MPI."""
        for name in _RANK_VARIABLES:
            value = os.environ.get(name, "")
            if value.isdigit():
                return int(value)
        return 0

    @classmethod
    def from_launch(cls, mode):
        """The Cluster the launcher made: checks ``--distributed`` against it; MPI is brought up here."""
        from minigrad import distributed as dist
        launched = dist.launched_world_size()
        if mode == "auto":
            mode = "none" if launched <= 1 else "mpi"  # "mpi" becomes "nccl" on a GPU in start()
            auto = True
        else:
            auto = False
        if mode == "none":
            if launched > 1:
                raise SettingsError(f"--distributed none, but the launcher started {launched} processes: each "
                                    "would train alone and write the same files; launch one process, or use "
                                    "--distributed auto|mpi|nccl")
            return cls()
        if not dist.is_available():
            raise SettingsError(f"{'this launch of ' + str(launched) + ' processes' if auto else '--distributed ' + mode} "
                                "needs mpi4py and an MPI library for data-parallel training: "
                                "pip install -e \".[mpi]\" (mpi4py and the mpich wheel)")
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        dist.install_excepthook()  # from here on, an unexpected error on one rank stops them all
        cluster = cls(mode, comm.Get_rank(), comm.Get_size())
        cluster._auto = auto
        if not cluster.is_main:  # errors still reach the terminal through sys.__stderr__
            sys.stdout = sys.stderr = open(os.devnull, "w")
        return cluster

    def start(self, settings, checkpoint=None):
        """Join the process group for ``settings``' device; record the world size and global batch in them."""
        from minigrad import distributed as dist
        before = None if checkpoint is None else checkpoint["meta"]["settings"].get("world_size", 1)
        if before is not None and before != self.world_size:
            print(f"resuming a run of {before} process(es) on {self.world_size}: the weights and optimizer state "
                  f"are loaded, the data is re-sharded (global batch {settings['batch_size']} x {self.world_size} "
                  f"instead of x {before}; the steps per epoch change with it, and a per-step lr schedule (poly) "
                  "continues from its step count over the new total)", flush=True)
        settings["world_size"] = self.world_size
        settings["global_batch_size"] = settings["batch_size"] * self.world_size
        gpu = backend.normalize_device(settings["device"]) == "gpu"
        if not self.enabled:
            if gpu:
                self._use_gpu(settings["device"], local_rank=0)
            return
        mode = "nccl" if self.mode == "mpi" and gpu and getattr(self, "_auto", False) else self.mode
        if mode == "nccl" and not gpu:
            raise SettingsError("--distributed nccl needs --device gpu (NCCL reduces GPU memory)")
        device = self._use_gpu(settings["device"], dist.get_local_rank()) if gpu else None
        dist.init_process_group(mode, **({"device": device} if mode == "nccl" else {}))
        self.mode = mode
        run_id = [settings.get("run_id")]
        dist.broadcast_object_list(run_id, src=0)  # one run, one id: rank 0's
        settings["run_id"] = run_id[0]

    @staticmethod
    def _use_gpu(device, local_rank):
        """``gpu:K`` -> GPU K; plain ``gpu`` -> this process's rank on the machine modulo the GPUs it sees."""
        cp = backend.cupy()
        count = cp.cuda.runtime.getDeviceCount()
        name = str(device)
        index = int(name.split(":")[1]) if ":" in name else local_rank % count
        if not 0 <= index < count:
            raise SettingsError(f"--device {device}: this machine has {count} GPU(s) (0..{count - 1})")
        cp.cuda.Device(index).use()
        return index

    def wrap(self, run):
        """Make ``run``'s net data-parallel: SyncBatchNorm in place of BatchNorm2d, gradients averaged by DDP.

        ``run.model`` stays the bare net (checkpoints keep the one-process names); the
        DistributedDataParallel wrapper only needs to exist for its gradient hooks.
        """
        if not self.enabled:
            return
        from minigrad.nn import SyncBatchNorm
        from minigrad.nn.parallel import DistributedDataParallel
        run.model = SyncBatchNorm.convert_sync_batchnorm(run.model)
        self.ddp = DistributedDataParallel(run.model)

    # ---------------------------------------------------------------- during the run
    def loader_options(self, evaluation=False):
        """DataLoader arguments for this rank's share (evaluation: without repeats)."""
        if not self.enabled:
            return {}
        return {"num_replicas": self.world_size, "rank": self.rank, **({"pad": False} if evaluation else {})}

    def barrier(self):
        if self.enabled:
            from minigrad import distributed as dist
            dist.barrier()

    def any(self, flag):
        """True on every rank when ``flag`` is true on any (a stop request, agreed on at a step boundary)."""
        if not self.enabled:
            return bool(flag)
        import numpy as np
        from minigrad import distributed as dist
        value = np.array([1.0 if flag else 0.0])
        dist.all_reduce(value, "max")
        return bool(value[0])

    def mean(self, value):
        """The mean of a float over the ranks (a step's loss: the global batch's when the ranks' batches are equal)."""
        if not self.enabled:
            return value
        import numpy as np
        from minigrad import distributed as dist
        array = np.array([value], dtype=np.float64)
        dist.all_reduce(array, "mean")
        return float(array[0])

    def share_output_dir(self, run):
        """After rank 0 has claimed the run folder: every rank learns its path."""
        if not self.enabled:
            return
        from pathlib import Path
        from minigrad import distributed as dist
        path = [None if run.out is None else str(run.out)]
        dist.broadcast_object_list(path, src=0)
        run.out = Path(path[0])
        run.settings["output_dir"] = path[0]

    # ---------------------------------------------------------------- the end
    def fail(self, error, code):
        """Print ``error`` once (``error:``, naming the rank when there are several) and stop every rank.

        Every rank may hit the same error (bad flags): rank 0 says it at once and aborts
        the job; the others wait a second first, so they are stopped before they repeat it.
        """
        if self.world_size == 1:
            print(f"error: {error}", file=sys.stderr)
            return code
        if not self.is_main:
            time.sleep(1.0)
        print(f"error (rank {self.rank} of {self.world_size}): {error}", file=sys.__stderr__, flush=True)
        self.abort(code)

    def abort(self, code):
        if self.world_size > 1:
            from minigrad import distributed as dist
            dist.abort(code)
        return code

    def finish(self):
        """Every rank is done (rank 0's files are written): leave the group."""
        if self.enabled:
            from minigrad import distributed as dist
            dist.barrier()
            dist.destroy_process_group()
