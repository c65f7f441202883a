"""Preemption: SIGTERM (SLURM, Kubernetes, spot VMs) or a first Ctrl-C stops training after a checkpoint.

A platform that reclaims a machine sends SIGTERM and, a grace period later (Kubernetes 30 s by default, spot
VMs 30-120 s), SIGKILL. While training runs, the first SIGTERM or SIGINT only raises a flag
(:class:`whisper_finetune.signals.GracefulStop`); :class:`Preemption` reads it at the end of each optimizer
step (``on_step_end``, a public Trainer hook) and asks the Trainer to save and stop (``control.should_save``,
``control.should_training_stop``). The checkpoint is the usual staged one
(:class:`whisper_finetune.train.trainer.StagedCheckpoints`), so ``--resume_from_ckpt latest`` continues
exactly where the run stopped. Once it is published (``on_save``) the callback raises
:class:`whisper_finetune.errors.Stopped`: the run ends there, skipping the end-of-training work
(best-model reload, final model, reports) that a grace period has no time for, and the script exits with
143 (SIGTERM) or 130 (SIGINT).

Under ``torchrun`` the signal may reach one rank, or all of them during different steps: each step the
flag is all-reduced (max, one element; gloo on a CPU) so that every rank stops after the same step and
takes part in the same checkpoint. A signal during an evaluation takes effect when it is over.
"""
import contextlib
import logging
import time

import torch
import torch.distributed as dist
from transformers.trainer_callback import TrainerCallback

from ..errors import Stopped
from ..signals import GracefulStop, exit_status

logger = logging.getLogger(__name__)


class Preemption(TrainerCallback):
    """Save and stop after the optimizer step during which a SIGTERM or SIGINT arrived (on any rank)."""

    def __init__(self, before_stopping=None):
        self.before_stopping = before_stopping  # called before the stop line is logged (closes the progress bar)
        self.stop = GracefulStop()
        self.signum = None  # the signal that stopped the run, agreed by every rank
        self.step = None
        self.started = None

    @contextlib.contextmanager
    def armed(self):
        """Handle the signals gracefully for the ``with`` block (the training loop)."""
        with self.stop.installed():
            yield

    def agreed_signal(self, args):
        """The signal number any rank received (0: none), the same on every rank."""
        signum = self.stop.signum or 0
        if args.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([signum], dtype=torch.int32, device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def on_step_end(self, args, state, control, **kwargs):
        signum = self.agreed_signal(args)
        if signum and self.signum is None:
            self.signum, self.step, self.started = signum, state.global_step, time.perf_counter()
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.signum is None or state.global_step != self.step:
            return
        seconds = time.perf_counter() - self.started
        message = (f"preempted at step {self.step}: checkpoint-{self.step} written in {seconds:.1f} s; rerun the same "
                   f"command with --resume_from_ckpt latest")
        if self.before_stopping is not None:
            self.before_stopping()
        if args.process_index == 0:
            logger.warning("%s", message)
        raise Stopped(message, exit_status(self.signum))
