"""chords_torch: parallel executors for ``chords_core.chords`` on torch.

The core engine stays the single implementation of CHORDS; an executor only evaluates the points
of each round (``executor(model, xs, ts) -> outs``):

- ``DeviceExecutor``: one replica per device (several GPUs, or CPU workers), a thread per device;
- ``ProcessExecutor``: one worker process per core slot, states in shared memory (CPU parallelism);
- ``DistributedExecutor`` + ``serve``: torch.distributed (gloo / nccl, launched with torchrun);
  rank 0 runs the engine, the other ranks evaluate.

Point k of a round (= core k) runs on worker k mod W. Failures raise ``ModelOutputError`` (bad
output), ``WorkerError`` (model exception), ``WorkerDied`` or ``WorkerTimeout`` in the caller.
"""

from ._common import ExecutorClosed, WorkerDied, WorkerError, WorkerTimeout, assign
from .device import DeviceExecutor, replicate
from .distributed import DistributedExecutor, serve
from .process import ProcessExecutor

__version__ = "0.1.0"

__all__ = ["DeviceExecutor", "ProcessExecutor", "DistributedExecutor", "serve", "replicate", "assign",
           "WorkerError", "WorkerDied", "WorkerTimeout", "ExecutorClosed"]
