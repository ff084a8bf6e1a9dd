"""Run folders and the Lightning Trainer every training stage uses: loggers, checkpoints, resume."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import platform
import resource
import subprocess
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bingo.config import Config, OptimConfig, TrainerConfig, save_config
from bingo.data.datasets import ImageDataset
from bingo.data.order import EpochBatches
from bingo.data.views import ImageBatches, as_batch
from bingo.errors import Preempted, UserError
from bingo.eval.monitor import KnnMonitor
from bingo.models.checkpoints import AtomicCheckpointIO, atomic_write

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
log = logging.getLogger("bingo")


def is_rank_zero() -> bool:
    """True in the process that writes results (global rank 0, also before DDP starts)."""
    return rank_zero_only.rank == 0


def prepare_run_folder(out: Path, cfg: Config, resume: bool) -> None:
    """Create an experiment's folder (demo, compare, repro) and save its resolved config; refuses to overwrite
    another run unless `resume` (its stages' folders are checked by the run store, bingo.store)."""
    if not is_rank_zero():
        return
    if (out / "config.yaml").exists() and not resume:
        raise UserError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)


def write_results(out: Path, results: dict) -> None:
    """Write results.json into the run folder (rank 0 only, atomically)."""
    if is_rank_zero():
        text = json.dumps(results, indent=2)
        atomic_write(out / "results.json", lambda tmp: Path(tmp).write_text(text))


def file_digest(path: Path) -> str:
    """Short sha256 of a file's bytes: the identity of a teacher or bag file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def peak_memory_mib() -> dict[str, float]:
    """Peak memory so far: this process and its largest child (data loader workers); the GPU's, if one is used."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    peaks = {"main_mib": round(own, 1), "largest_child_mib": round(child, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks["gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks


class Throughput(Callback):
    """Training samples per second, all processes together: train/images_per_s_step over the last `window`
    steps, on the steps Lightning writes, and train/images_per_s_epoch over the epoch.

    A sample is what the data set yields per index: an image with its views (a BINGO sample is an
    anchor with a member of its bag). Measured between batch ends, so loading and waiting count.
    """

    def __init__(self, window: int):
        self.steps: deque[tuple[float, int]] = deque(maxlen=max(1, window))  # (seconds, samples) per step
        self.last: float | None = None
        self.epoch = [0.0, 0]  # seconds, samples

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start timing afresh: the first batch of an epoch waits for the data loader to start."""
        self.last, self.epoch = None, [0.0, 0]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: tuple,
                           batch_idx: int) -> None:
        """Record this step; log the rate over the window when Lightning writes this step's values."""
        now = time.perf_counter()
        if self.last is not None:
            step = (now - self.last, len(batch[1]) * trainer.world_size)  # batch: (views, labels, ...)
            self.steps.append(step)
            self.epoch = [self.epoch[0] + step[0], self.epoch[1] + step[1]]
            if trainer.global_step % trainer.log_every_n_steps == 0:  # written by Lightning (each costs ~1 ms)
                seconds, samples = map(sum, zip(*self.steps, strict=True))
                pl_module.log("train/images_per_s_step", samples / seconds, on_step=True, on_epoch=False)
        self.last = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The epoch's rate."""
        if self.epoch[0] > 0:
            pl_module.log("train/images_per_s_epoch", self.epoch[1] / self.epoch[0], on_step=False, on_epoch=True)


class FiniteLoss(Callback):
    """Stops a run whose loss terms turn NaN or infinite, in one line: the step, the terms, the learning rate.

    Each step's terms are checked on the device without waiting for it; the first bad step is read
    back every `every` steps and at each epoch end, before that epoch's checkpoint is written, so the
    last good checkpoint is never replaced by a broken one.
    """

    def __init__(self, every: int, checkpoint: Path):
        self.every, self.checkpoint = max(1, every), checkpoint
        self.step: torch.Tensor | None = None  # the first bad step (-1: none yet), on the device
        self.lr: torch.Tensor | None = None  # the learning rate at that step
        self.terms: dict[str, torch.Tensor] = {}  # term -> whether it was bad at that step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: tuple,
                           batch_idx: int) -> None:
        """Record the first step with a non-finite term; read it back every `every` steps."""
        terms = getattr(pl_module, "last_terms", None) or {}
        bad = {name: ~value.detach().float().isfinite().all() for name, value in terms.items()}
        if bad:
            device = next(iter(bad.values())).device
            if self.step is None:
                self.step, self.lr = torch.tensor(-1, device=device), torch.tensor(0.0, device=device)
            first = (self.step < 0) & torch.stack(list(bad.values())).any()
            self.step = torch.where(first, trainer.global_step, self.step)
            self.lr = torch.where(first, float(trainer.optimizers[0].param_groups[0]["lr"]), self.lr)
            for name, flag in bad.items():
                self.terms[name] = torch.where(first, flag, self.terms.get(name, torch.zeros_like(flag)))
        if (batch_idx + 1) % self.every == 0:
            self.check()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check before the epoch's checkpoint is written (Lightning runs checkpoint callbacks last)."""
        self.check()

    def check(self) -> None:
        """Refuse to go on after a non-finite loss term."""
        if self.step is None or int(self.step) < 0:
            return
        step, lr = self.step, self.lr
        names = ", ".join(name for name, flag in self.terms.items() if flag)
        kept = f"the last good checkpoint, {self.checkpoint}, is kept" if self.checkpoint.exists() else \
            "no checkpoint was written yet"
        raise UserError(f"training stopped: the loss became NaN or infinite at step {int(step)} (term {names}, "
                        f"learning rate {float(lr):.3g}); {kept}; lower optim.lr (or resume with --resume after "
                        "changing it)")


class UnreadableImages(Callback):
    """Says once which image files could not be read (another image took their place); stops the run in one line
    when more than `max_fraction` of `images` could not be read. Checked every `every` steps and at epoch ends.
    """

    def __init__(self, images: ImageDataset, max_fraction: float, every: int):
        self.images, self.max_fraction, self.every = images, max_fraction, max(1, every)
        self.reported: set[int] = set()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: tuple,
                           batch_idx: int) -> None:
        """Check every `every` steps."""
        if (batch_idx + 1) % self.every == 0:
            self.check()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check at the end of each epoch."""
        self.check()

    def check(self) -> None:
        """Report the newly found unreadable images; refuse to go on past the allowed fraction."""
        found = self.images.unreadable()
        for index in sorted(found.keys() - self.reported):
            if is_rank_zero():
                log.warning("skipped an image that cannot be read: %s; another image takes its place", found[index])
        self.reported |= found.keys()
        if len(found) > self.max_fraction * len(self.images):
            first = found[min(found)]
            raise UserError(f"{len(found)} of {len(self.images)} images cannot be read, more than data.max_bad_images="
                            f"{self.max_fraction:g} of them (listed in {self.images.unreadable_log}; the first: "
                            f"{first}); repair or remove them, or raise data.max_bad_images")


class RunCheckpoint(Checkpoint):
    """checkpoints/last.ckpt at every epoch end, every `every_minutes` within an epoch, and when SIGTERM stops the run.

    Written atomically: the previous checkpoint stays whole until the new one is complete; `guards`
    (the non-finite-loss check) run first, so a broken state never replaces a good one. Besides what
    Lightning stores (weights, queues, optimizer, schedule, progress), it holds the training order's
    position and the random number generators' states: a run resumed from it continues with the
    batches and random draws it would have had, and ends with the same weights (docs/reliability.md).
    """

    def __init__(self, path: Path, every_minutes: float, order: EpochBatches | None = None,
                 guards: list[Callable[[], None]] = ()):
        self.path, self.every_seconds, self.order, self.guards = path, every_minutes * 60, order, list(guards)
        self.trainer: L.Trainer | None = None
        self.saved_at = time.monotonic()
        self.restored: dict | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: tuple,
                           batch_idx: int) -> None:
        """Save when `every_minutes` have passed since the last save (not on an epoch's last batch)."""
        due = self.every_seconds > 0 and time.monotonic() - self.saved_at >= self.every_seconds
        if due and batch_idx + 1 < trainer.num_training_batches:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save at the end of every epoch."""
        self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Save when SIGTERM stopped the run (Lightning stops it between two steps)."""
        if isinstance(exception, SIGTERMException):
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Run the guards, then write the checkpoint."""
        for guard in self.guards:
            guard()
        trainer.save_checkpoint(self.path)
        self.saved_at = time.monotonic()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Keep the trainer: a checkpoint may also be written by Lightning (SLURM's requeue signal)."""
        self.trainer = trainer

    def state_dict(self) -> dict:
        """The training order's position (as Lightning will resume: batches of the epoch whose step is done)
        and the random number generators' states."""
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed, "rng": rng_states()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the training order where it stopped; keep the generators' states for the start of training.

        (Lightning may start the data loader's workers, which read ahead in the order, before training starts.)
        """
        if self.order is not None:
            self.order.resume(state_dict["epoch"], state_dict["batches"])
        self.restored = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """On resume: continue the schedule and the random draws where they stopped."""
        if self.restored is None:
            return
        catch_up_schedules(trainer)
        set_rng_states(self.restored["rng"])
        self.restored = None


def catch_up_schedules(trainer: L.Trainer) -> None:
    """Step the per-step schedules of a checkpoint written after an optimizer step but before its schedule step."""
    for config in trainer.lr_scheduler_configs:
        if config.interval == "step":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "lr_scheduler.step() before optimizer.step()"
                while config.scheduler.last_epoch < trainer.global_step:
                    config.scheduler.step()


def rng_states() -> dict:
    """The states of torch's generators: the CPU's and, where used, each CUDA device's."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` returned (the CUDA states only onto as many devices)."""
    torch.set_rng_state(states["cpu"])
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def lightning_precision(run: TrainerConfig) -> str:
    """trainer.precision as Lightning takes it: `auto` is bf16-mixed where bf16 runs natively, else 32-true.

    On this project's CPU (avx512_bf16, AMX) bf16 autocast makes the demo's training steps about 1.5x
    faster with unchanged accuracy (docs/performance.md); CPUs without native bf16 would emulate it.
    """
    if run.precision != "auto":
        return run.precision
    if torch.cuda.is_available() and run.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or amx_bf16 among its Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_trainer(cfg: Config, epochs: int, out: Path, callbacks: list | None = None,
                 own_order: bool = False) -> L.Trainer:
    """A Trainer with the configured devices, precision and loggers (into `out`); checkpoints if `callbacks` has one.

    `own_order`: the data loaders shard the data between processes themselves (`EpochBatches`).
    """
    run = cfg.trainer
    loggers = [_logger(name, out) for name in run.loggers]
    callbacks = list(callbacks or [])
    checkpoints = any(isinstance(callback, Checkpoint) for callback in callbacks)
    return L.Trainer(max_epochs=epochs, accelerator=run.accelerator, devices=run.devices,
                     num_nodes=run.num_nodes, strategy=run.strategy, precision=lightning_precision(run),
                     logger=loggers,
                     callbacks=callbacks, plugins=[AtomicCheckpointIO()], default_root_dir=out,
                     log_every_n_steps=run.log_every_n_steps, enable_progress_bar=run.progress_bar,
                     limit_train_batches=run.limit_train_batches, enable_model_summary=False,
                     enable_checkpointing=checkpoints, use_distributed_sampler=not own_order)


def _logger(name: str, out: Path) -> object:
    from lightning.pytorch import loggers

    if name == "csv":
        return loggers.CSVLogger(out, name="", version="logs")
    makers = {"tensorboard": lambda: loggers.TensorBoardLogger(out, name="", version="tensorboard"),
              "wandb": lambda: loggers.WandbLogger(save_dir=str(out), name=out.name)}
    if name in makers:
        try:
            return makers[name]()
        except ModuleNotFoundError:
            raise UserError(f"trainer.loggers asks for {name}, which is not installed: pip install {name}") from None
    raise UserError(f"unknown logger '{name}'; choose from csv, tensorboard, wandb")


def fit(module: L.LightningModule, dataset: Dataset, cfg: Config, optim: OptimConfig, out: Path,
        resume: bool, monitor: bool = True, drop_last: bool = True) -> L.Trainer:
    """Train `module` on `dataset` for optim.epochs, resuming from the last checkpoint if asked.

    Logs throughput, and the online kNN monitor when `monitor` and cfg.monitor.every_n_epochs are set;
    checkpoints as `RunCheckpoint` says. `drop_last`: train on full batches only.
    """
    checkpoint = out / LAST_CHECKPOINT
    finite = FiniteLoss(cfg.trainer.log_every_n_steps, checkpoint)
    callbacks: list[Callback] = [Throughput(cfg.trainer.log_every_n_steps), finite]
    images: ImageDataset | None = getattr(dataset, "base", None)  # the images behind views (not for features)
    if images is not None:
        images.record_unreadable(out)
        callbacks.append(UnreadableImages(images, cfg.data.max_bad_images, cfg.trainer.log_every_n_steps))
    if monitor and cfg.monitor.every_n_epochs > 0:
        callbacks.append(KnnMonitor(cfg))
    saver = RunCheckpoint(checkpoint, cfg.trainer.checkpoint_every_minutes, guards=[finite.check])
    trainer = make_trainer(cfg, optim.epochs, out, [*callbacks, saver], own_order=True)
    processes = trainer.world_size
    if optim.batch_size % processes:
        raise UserError(f"batch size {optim.batch_size} does not split over {processes} processes")
    if drop_last and len(dataset) < optim.batch_size:
        raise UserError(f"the data set has {len(dataset)} images, fewer than one batch ({optim.batch_size}); "
                        "lower the batch size")
    saver.order = EpochBatches(len(dataset), max(1, optim.batch_size // processes), cfg.seed, trainer.global_rank,
                               processes, drop_last)
    in_memory = isinstance(dataset, ImageBatches | TensorDataset)  # one indexing a batch: no loader process
    workers = 0 if in_memory else cfg.data.num_workers
    loader = DataLoader(dataset, batch_sampler=saver.order, num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(cfg.seed),
                        collate_fn=as_batch if isinstance(dataset, ImageBatches) else None)
    resume_from = newest_checkpoint(out) if resume else None
    if resume_from and is_rank_zero():
        keep_metrics(out / "logs")
    with warnings.catch_warnings():
        # the order is resumable through RunCheckpoint, which Lightning cannot see; earlier metrics are kept aside
        warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")
        warnings.filterwarnings("ignore", "Experiment logs directory .* exists and is not empty")
        try:
            trainer.fit(module, loader, ckpt_path=resume_from)
        except SIGTERMException:
            raise Preempted(f"stopped by SIGTERM at step {trainer.global_step}; checkpoint saved in {checkpoint}; "
                            "run the same command with --resume to continue") from None
    if resume_from and is_rank_zero():
        merge_metrics(out / "logs")
    return trainer


def check_resumable(out: Path, module: L.LightningModule) -> None:
    """Refuse, before anything is written, to resume a run whose newest checkpoint does not fit `module`."""
    path = newest_checkpoint(out)
    if path is None:
        return
    stored, own = AtomicCheckpointIO().load_checkpoint(str(path))["state_dict"], module.state_dict()
    differ = sorted(own.keys() ^ stored.keys()) + \
        sorted(k for k in own.keys() & stored.keys() if own[k].shape != stored[k].shape)
    if differ:
        shown = ", ".join(differ[:3]) + (f" (+{len(differ) - 3} more)" if len(differ) > 3 else "")
        raise UserError(f"cannot resume {out}: its checkpoint {path.name} was made with other networks or queue "
                        f"sizes ({shown} differ); resume with the settings of {out / 'config.yaml'}, or choose "
                        "another --out")


def newest_checkpoint(out: Path) -> Path | None:
    """The run's newest checkpoint: checkpoints/last.ckpt, or the one Lightning wrote on SLURM's requeue signal."""
    found = [out / LAST_CHECKPOINT, *out.glob("hpc_ckpt_*.ckpt")]
    found = [path for path in found if path.exists()]
    return max(found, key=lambda path: path.stat().st_mtime_ns) if found else None


def keep_metrics(logs: Path) -> None:
    """Before resuming: move metrics.csv into earlier-metrics.csv, which Lightning's CSV logger would delete."""
    current, earlier = logs / "metrics.csv", logs / "earlier-metrics.csv"
    if current.exists():
        _write_rows(earlier, _read_rows(earlier) + _read_rows(current))
        current.unlink()


def merge_metrics(logs: Path) -> None:
    """After resuming: metrics.csv holds the earlier rows, then the new ones."""
    earlier = logs / "earlier-metrics.csv"
    if earlier.exists():
        _write_rows(logs / "metrics.csv", _read_rows(earlier) + _read_rows(logs / "metrics.csv"))
        earlier.unlink()


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _write_rows(path: Path, rows: list[dict]) -> None:
    columns = sorted(set().union(*rows)) if rows else []
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue()))


def machine_info() -> dict:
    """The machine and code a result was measured on: CPU, cores, GPU, torch, commit."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "platform": platform.platform(),
            "commit": git_commit()}


def git_commit() -> str:
    """The commit of the bingo source tree ('+changes' when it has uncommitted changes), or 'unknown'."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")
