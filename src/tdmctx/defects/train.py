"""Training loop for the column classifiers: seeded, checkpointed, early-stopped, DDP-ready.

Batch format
------------
Every loader yields dicts (what ``torch.utils.data.default_collate`` makes of per-sample
dicts):

``"image"``
    (B, C, H, W) float32 normalised patches.
``"context"``
    (B, :data:`~tdmctx.defects.models.CONTEXT_DIM`) float32 contexts encoded with
    :func:`~tdmctx.defects.models.encode_contexts` (all fields; the model masks the ones it
    may not see). The encoded tensor, not ``Context`` objects, so that it collates and can
    be built in loader workers. May be absent for image-only models.
``"label"``
    (B,) int64 class ids in the order of :data:`~tdmctx.defects.context.CLASS_NAMES`.

Reproducibility
---------------
Each epoch reseeds torch from ``(seed, epoch)`` (the loader's shuffling, dropout, context
dropout and shuffling all draw from it), inside :func:`torch.random.fork_rng` so that the
caller's generators are left as they were. Deterministic algorithms are switched on for
the duration of the call (``warn_only``: an op without a deterministic kernel warns rather
than fails). An interrupted run resumed from its checkpoint therefore ends with the same
weights as an uninterrupted one, on the same hardware and thread count.

Several GPUs (or processes)
---------------------------
Launch one process per device with ``torchrun``; inside the script call
:func:`init_distributed` once, then :func:`train` as usual::

    torchrun --standalone --nproc_per_node 4 my_training_script.py

:func:`train` wraps the model in ``DistributedDataParallel`` (NCCL on CUDA, gloo on the
CPU), gives each map-style loader a ``DistributedSampler`` when it has none (an iterable
loader must shard itself by rank and yield equally many batches on every rank), reduces
the validation metrics across processes so that every rank takes the same early-stopping
decision, and writes checkpoints from rank 0 only. ``DistributedSampler`` pads the last shard by
repeating a few samples, so the validation NLL under DDP counts those twice.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset
from tqdm.auto import tqdm

from tdmctx.defects.models import CONTEXT_DIM, _atomic_save, drop_context_fields
from tdmctx.devices import resolve_device

__all__ = ["train", "predict_loader", "init_distributed", "shutdown_distributed"]

_LAST = "last.pt"
_BEST = "best.pt"


# -- distributed helpers ----------------------------------------------------------------


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that ``torchrun`` set up; a no-op for a single process.

    Parameters
    ----------
    backend
        ``None`` picks ``"nccl"`` when CUDA is available, else ``"gloo"``.

    Returns
    -------
    (rank, world_size)
        ``(0, 1)`` when not launched by ``torchrun``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Leave the process group (call at the end of a ``torchrun`` script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _train_device(device: str | torch.device | None, world: int) -> torch.device:
    dev = resolve_device(device)
    if world > 1 and dev.type == "cuda" and dev.index is None:
        # One GPU per process: the local rank picks it.
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def _sharded(loader: Any, *, shuffle: bool, seed: int, name: str) -> Any:
    """The same loader with a ``DistributedSampler``, unless it shards itself.

    Loaders over an iterable dataset (or any other iterable of batches) are used as they
    are: they must draw different batches on each rank (from
    ``torch.distributed.get_rank()``) and the same number of them, or DDP stalls.
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        raise ValueError(f"{name} has a custom batch sampler; under torchrun give it a DistributedSampler yourself")
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )


# -- determinism ----------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if device.type == "cuda":
        # cuBLAS is only deterministic with a fixed workspace; it must be set before the
        # first cuBLAS call of the process, so a caller that already ran CUDA work may
        # get a warning instead.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]
        torch.backends.cudnn.deterministic = previous[3]


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] % (2**63))


# -- batches ----------------------------------------------------------------------------


def _unpack(
    batch: Any, device: torch.device, needs_context: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    if not isinstance(batch, Mapping):
        raise ValueError(f"a batch is a {type(batch).__name__}; expected a dict with 'image', 'context', 'label'")
    missing = [k for k in ("image", "label") + (("context",) if needs_context else ()) if k not in batch]
    if missing:
        raise ValueError(f"batch lacks key(s) {missing}; it has {sorted(batch)}")
    image, label = batch["image"], batch["label"]
    if not (isinstance(image, torch.Tensor) and image.ndim == 4 and image.is_floating_point()):
        raise ValueError(f"batch['image'] must be a (B, C, H, W) float tensor; got {getattr(image, 'shape', type(image))}")
    if not (isinstance(label, torch.Tensor) and label.shape == (image.shape[0],) and label.dtype == torch.int64):
        raise ValueError(f"batch['label'] must be a ({image.shape[0]},) int64 tensor; got {getattr(label, 'shape', type(label))} "
                         f"{getattr(label, 'dtype', '')}")
    context = None
    if needs_context:
        context = batch["context"]
        if not (isinstance(context, torch.Tensor) and context.shape == (image.shape[0], CONTEXT_DIM)):
            raise ValueError(
                f"batch['context'] must be a ({image.shape[0]}, {CONTEXT_DIM}) tensor from encode_contexts; "
                f"got {getattr(context, 'shape', type(context))}"
            )
        context = context.to(device, torch.float32, non_blocking=True)
    return image.to(device, torch.float32, non_blocking=True), context, label.to(device, non_blocking=True)


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _needs_context(model: nn.Module) -> bool:
    return bool(getattr(model, "uses_context", True))


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over a whole loader (eval mode, true contexts).

    Returns
    -------
    logits, labels
        (N, 5) float32 and (N,) int64 numpy arrays, in loader order.
    """
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    needs = _needs_context(model)
    logits, labels = [], []
    try:
        for batch in tqdm(iter(loader), desc="predict", total=_length(loader), disable=not progress, leave=False):
            x, c, y = _unpack(batch, dev, needs)
            logits.append(model(x, c).float().cpu())
            labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise ValueError("loader yielded no batches")
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


# -- training ---------------------------------------------------------------------------


def _empty_history() -> dict[str, Any]:
    return {
        "epoch": [],
        "train_loss": [],
        "train_accuracy": [],
        "val_nll": [],
        "val_accuracy": [],
        "lr": [],
        "seconds": [],
        "patches_per_s": [],
        "best_epoch": None,
        "best_val_nll": math.inf,
        "stopped_early": False,
    }


def _check_args(epochs: int, lr: float, patience: int | None, context_dropout: float) -> None:
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs={epochs!r} must be a positive integer")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr={lr!r} must be a positive learning rate")
    if patience is not None and not (isinstance(patience, int) and patience >= 1):
        raise ValueError(f"patience={patience!r} must be a positive integer or None (no early stopping)")
    if not 0.0 <= context_dropout <= 1.0:
        raise ValueError(f"context_dropout={context_dropout!r} must be a probability in [0, 1]")


def train(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    epochs: int,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = True,
    patience: int | None = 5,
    context_dropout: float = 0.15,
    shuffle_context: bool = False,
    weight_decay: float = 1e-4,
    amp: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a classifier with AdamW and a cosine schedule; keep the best validation NLL.

    Parameters
    ----------
    model
        A :class:`~tdmctx.defects.models.ContextClassifier` (any module with
        ``forward(image, context)`` works; ``config`` and ``save`` are used when present).
        Trained in place; on return it holds the weights of the best epoch.
    train_loader, val_loader
        Loaders of batches in the format of the module docstring.
    epochs
        Largest number of epochs (the cosine schedule spans them).
    lr
        Peak learning rate.
    seed
        Seeds every draw of the run (see the module docstring).
    device
        ``None``: CUDA when available (the local rank's GPU under ``torchrun``), else CPU.
    checkpoint_dir
        Where ``last.pt`` (full training state) and ``best.pt`` (best model, loadable with
        ``ContextClassifier.load``) are written after every epoch, atomically.
    resume
        Continue from ``checkpoint_dir/last.pt`` when it exists. Its model config and
        training settings must match this call.
    patience
        Stop after this many epochs without a lower validation NLL; ``None`` never stops.
    context_dropout
        Probability, per field and sample, of marking a context field unknown in training.
    shuffle_context
        Control: permute the contexts across each training batch so that they carry no
        information about the image (validation keeps the true contexts). Meaningful only
        when batches mix several contexts.
    weight_decay
        AdamW weight decay.
    amp
        Mixed precision (float16 autocast with gradient scaling) on CUDA; ignored on CPU.
    progress
        Show tqdm bars (rank 0 only).

    Returns
    -------
    dict
        Per-epoch lists ``epoch``, ``train_loss``, ``train_accuracy``, ``val_nll`` (nats per
        sample), ``val_accuracy``, ``lr``, ``seconds``, ``patches_per_s`` (all processes
        together), and ``best_epoch``, ``best_val_nll``, ``stopped_early``, ``world_size``,
        ``device``.
    """
    _check_args(epochs, lr, patience, context_dropout)
    rank, world = _world()
    dev = _train_device(device, world)
    model.to(dev)
    net: nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        train_loader = _sharded(train_loader, shuffle=True, seed=seed, name="train_loader")
        val_loader = _sharded(val_loader, shuffle=False, seed=seed, name="val_loader")
    needs_context = _needs_context(model)
    use_amp = amp and dev.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    settings = {
        "epochs": epochs, "lr": lr, "seed": seed, "patience": patience, "context_dropout": context_dropout,
        "shuffle_context": shuffle_context, "weight_decay": weight_decay, "world_size": world,
    }
    config = getattr(model, "config", None)
    history = _empty_history()
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs = 0
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        if resume and (ckdir / _LAST).is_file():
            state = torch.load(ckdir / _LAST, map_location=dev, weights_only=True)
            for key, mine in (("config", config), ("settings", settings)):
                if state[key] != mine:
                    raise ValueError(
                        f"checkpoint {ckdir / _LAST} was written with {key} {state[key]}, this call has {mine}; "
                        "use the same arguments, another checkpoint_dir, or resume=False"
                    )
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            history, best_state, bad_epochs = state["history"], state["best_state"], state["bad_epochs"]

    start = len(history["epoch"])
    show = progress and rank == 0
    with _deterministic(dev), torch.random.fork_rng(
        devices=[dev.index or 0] if dev.type == "cuda" else [], device_type="cuda"
    ):
        bar = tqdm(range(start, epochs), desc="epochs", disable=not show, initial=start, total=epochs)
        for epoch in bar:
            if history["stopped_early"]:
                break
            epoch_seed = _epoch_seed(seed, epoch)
            torch.manual_seed(epoch_seed)
            gen = torch.Generator().manual_seed(epoch_seed)
            if isinstance(getattr(train_loader, "sampler", None), DistributedSampler):
                train_loader.sampler.set_epoch(epoch)
            if hasattr(getattr(train_loader, "dataset", None), "set_epoch"):
                train_loader.dataset.set_epoch(epoch)  # iterable samplers (PatchSampler) draw anew
            t0 = time.perf_counter()
            net.train()
            sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss * n, correct, n
            # The iterator is made here, not by tqdm (which may draw from the generator
            # while wrapping a loader), so that progress bars never change the results.
            batches = iter(train_loader)
            for batch in tqdm(batches, desc=f"epoch {epoch + 1}", total=_length(train_loader), disable=not show,
                              leave=False):
                x, c, y = _unpack(batch, dev, needs_context)
                if c is not None:
                    c = drop_context_fields(c, context_dropout, generator=gen)
                    if shuffle_context:
                        c = c[torch.randperm(c.shape[0], generator=gen).to(dev)]
                with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                    logits = net(x, c)
                loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                n = y.shape[0]
                sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y).sum().double(),
                                     torch.tensor(float(n), dtype=torch.float64, device=dev)])
            seconds = time.perf_counter() - t0
            val = _validate(model, val_loader, dev, needs_context, use_amp)
            if world > 1:
                dist.all_reduce(sums)
                dist.all_reduce(val)
            current_lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            val_nll = float(val[0] / val[2])
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(float(sums[0] / sums[2]))
            history["train_accuracy"].append(float(sums[1] / sums[2]))
            history["val_nll"].append(val_nll)
            history["val_accuracy"].append(float(val[1] / val[2]))
            history["lr"].append(current_lr)
            history["seconds"].append(seconds)
            history["patches_per_s"].append(float(sums[2]) / seconds)
            if val_nll < history["best_val_nll"]:
                history["best_val_nll"], history["best_epoch"] = val_nll, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
            history["stopped_early"] = patience is not None and bad_epochs >= patience and epoch + 1 < epochs
            bar.set_postfix(val_nll=f"{val_nll:.4f}", best=history["best_epoch"])
            if ckdir is not None:
                if rank == 0:
                    _write_checkpoint(ckdir, model, optimizer, scheduler, scaler, history, best_state,
                                      bad_epochs, config, settings)
                if world > 1:
                    dist.barrier()
        bar.close()
    model.load_state_dict(best_state)
    history["world_size"] = world
    history["device"] = str(dev)
    return history


@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader, dev: torch.device, needs_context: bool, use_amp: bool) -> torch.Tensor:
    """(NLL sum, correct, count) over this process's share of the validation set."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=dev)
    for batch in loader:
        x, c, y = _unpack(batch, dev, needs_context)
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
            logits = model(x, c)
        nll = F.cross_entropy(logits.float(), y, reduction="sum")
        sums += torch.stack([nll.double(), (logits.argmax(1) == y).sum().double(),
                             torch.tensor(float(y.shape[0]), dtype=torch.float64, device=dev)])
    if sums[2] == 0:
        raise ValueError("val_loader yielded no samples")
    return sums


def _write_checkpoint(
    ckdir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    history: dict[str, Any],
    best_state: dict[str, torch.Tensor],
    bad_epochs: int,
    config: dict[str, Any] | None,
    settings: dict[str, Any],
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "history": history,
        "best_state": best_state,
        "bad_epochs": bad_epochs,
        "config": config,
        "settings": settings,
    }
    _atomic_save(state, ckdir / _LAST)
    if history["best_epoch"] == history["epoch"][-1] and hasattr(model, "save"):
        best = copy.deepcopy(model).cpu()
        best.save(ckdir / _BEST, card={"best_epoch": history["best_epoch"], "best_val_nll": history["best_val_nll"],
                                       "settings": settings})
