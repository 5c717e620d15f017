"""Running a function on two gloo ranks on the CPU, for the distributed tests
(integrations/test_distributed.py, range_test/test_range_test_ddp.py)."""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

WORLD = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(body, rank, port, *args):
    """Runs ``body(rank, *args)`` on one rank of a gloo group, then leaves the process
    without tearing the group down.

    torch 2.13's gloo teardown can deadlock: ~ProcessGroupGloo (run from a pybind dealloc,
    e.g. of DDP's Reducer, with the GIL held) joins its worker threads, while a worker
    thread that is destroying a finished Work waits for the GIL to drop a Python object
    from the Work's ThreadLocalState (native stacks from py-spy: main thread in
    std::thread::join <- ~ProcessGroupGloo <- ~Reducer <- pybind11_object_dealloc; worker
    thread in gil_scoped_acquire <- ~ThreadLocalState <- ~AsyncWork <- runLoop). The same
    race also aborted a rank ("terminate called without an active exception"). The
    results are on disk once ``body`` returns and both ranks pass the barrier, so each
    rank then exits at once; an error exits with status 1 after printing its traceback."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
        body(rank, *args)
        dist.barrier()  # no rank leaves while the other still needs it
    except BaseException:
        traceback.print_exc()
        exit_code = 1
    else:
        exit_code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def spawn_once(fn, args, timeout):
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                return "distributed workers did not finish within %.0f s" % timeout
    except ProcessException as err:
        return str(err)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return None


def spawn(fn, args_for_port, timeout=90.0, attempts=2):
    """Runs ``fn`` on WORLD ranks with ``args_for_port(port)``, a fresh port per attempt.

    The numbers are checked by the caller. The teardown deadlock that made launches
    hang is avoided in ``rank_main``; the one retry left covers the port race of
    ``free_port`` (another process may take the port before rank 0 binds it)."""
    errors = []
    for _ in range(attempts):
        error = spawn_once(fn, args_for_port(free_port()), timeout)
        if error is None:
            return
        errors.append(error)
    pytest.fail("distributed workers failed %d times: %s" % (attempts, " | ".join(errors)))
