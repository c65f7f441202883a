"""SIGTERM and Ctrl-C: how a script stops when a cluster, a container runtime or a user tells it to.

Python's default for SIGTERM is to die on the spot: no ``finally`` block runs, so DataLoader worker
processes (and a ``forkserver`` that started them) are left running with no parent, and a lock file stays
behind. :func:`terminate_raises` turns SIGTERM into :class:`Terminated`, an exception (a kind of
``KeyboardInterrupt``, so code that cleans up after Ctrl-C cleans up after it too): the stack unwinds,
half-written files are removed, workers are shut down, and the script exits with status 143.

Training wants more than that: finish the optimizer step and save a checkpoint first
(:mod:`whisper_finetune.train.preemption`), which :class:`GracefulStop` provides: while it is installed,
the first SIGTERM or SIGINT only raises a flag that the training loop reads between steps; a second one
aborts at once.

Both handlers are the parent's alone. A process forked while one is installed (a DataLoader or ``datasets``
pool worker) takes SIGTERM and SIGINT with the default action, from its first instruction: the signals are
blocked across the fork and unblocked in the child only once the default is back. Without that, a SIGTERM
that reaches a child before Python's after-fork set-up is discarded by it (CPython clears the signals that
arrived "in both processes"), and a pool worker told to stop at once waits forever for a task instead.
"""
import contextlib
import ctypes
import logging
import os
import signal
import threading
import time

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (see :func:`terminate_raises`)."""


def exit_status(signum):
    """The shell's status for a process ended by ``signum``: 128 + its number (143 SIGTERM, 130 SIGINT)."""
    return 128 + int(signum)


HANDLED = (signal.SIGTERM, signal.SIGINT)


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()


def _parents_only(handler):
    """Mark ``handler`` as one a forked child must not inherit (see the module's docstring)."""
    handler.parents_only = True
    return handler


def _inherited():
    """The signals whose installed handler is one of ours."""
    return [signum for signum in HANDLED if getattr(signal.getsignal(signum), "parents_only", False)]


_mask_before_fork = threading.local()  # the forking thread's signal mask, restored after the fork


def _block_before_fork():
    _mask_before_fork.value = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED) if _inherited() else None


def _restore_after_fork(in_child):
    mask = getattr(_mask_before_fork, "value", None)
    if mask is None:
        return
    if in_child:
        for signum in _inherited():
            signal.signal(signum, signal.SIG_DFL)
    _mask_before_fork.value = None
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal that came meanwhile is taken now


os.register_at_fork(before=_block_before_fork, after_in_parent=lambda: _restore_after_fork(False),
                    after_in_child=lambda: _restore_after_fork(True))


@contextlib.contextmanager
def terminate_raises():
    """For the ``with`` block: SIGTERM raises :class:`Terminated` in the main thread (outside the main thread, or
    where signals cannot be set, the block runs unchanged)."""
    if not _in_main_thread():
        yield
        return

    @_parents_only
    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class GracefulStop:
    """While installed (``with stop.installed():``), the first SIGTERM or SIGINT sets :attr:`signum` and
    returns: the code that polls it decides where to stop. A second one aborts at once (SIGINT:
    ``KeyboardInterrupt``; SIGTERM: :class:`Terminated`)."""

    def __init__(self):
        self.signum = None  # the first signal received, else None
        self.received_at = None  # time.perf_counter() when it came

    def _handler(self):
        @_parents_only
        def handler(signum, frame):
            if self.signum is not None:
                raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()
            self.signum, self.received_at = signum, time.perf_counter()
            logger.warning("received %s: finishing this step, then saving a checkpoint (send it again to stop at "
                           "once)", signal.Signals(signum).name)
        return handler

    @contextlib.contextmanager
    def installed(self):
        if not _in_main_thread():
            yield self
            return
        handler = self._handler()
        previous = {signum: signal.signal(signum, handler) for signum in HANDLED}
        try:
            yield self
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)


def die_with_parent(*_):
    """Ask Linux to send this process SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``): a
    ``worker_init_fn`` for DataLoader workers, so that not even a ``kill -9`` of the script leaves them
    running. Elsewhere than Linux, nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    parent = os.getppid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)
