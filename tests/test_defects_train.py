"""Training loop: learning a context-dependent toy task, the shuffled control, resume, early stopping, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tdmctx.defects.context import Context
from tdmctx.defects.models import ContextClassifier, encode_contexts
from tdmctx.defects.train import predict_loader, train

torch.set_num_threads(1)

# Blob amplitude per (context, class): 0.7 and 0.5 each mean different classes in the two
# contexts, so an image-only model tops out at 2/3 accuracy and a context model near 1.
_AMPLITUDE = np.array([[1.0, 0.5, 0.7], [0.7, 0.35, 0.5]])
_CONTEXTS = [Context("W", "Se", "Ti", 60e3), Context("W", "Se", "Ti", 300e3)]


class ToyPatches(Dataset):
    """Gaussian blobs whose class can only be read with the beam energy known."""

    def __init__(self, n: int, seed: int, size: int = 12, flip_labels: bool = False):
        rng = np.random.default_rng(seed)
        label = rng.integers(0, 3, n)
        which = rng.integers(0, 2, n)
        yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
        blob = np.exp(-(xx**2 + yy**2) / (2 * 1.5**2))
        image = _AMPLITUDE[which, label][:, None, None] * blob + rng.normal(0, 0.05, (n, size, size))
        self.image = torch.from_numpy(image[:, None].astype(np.float32))
        self.context = encode_contexts([_CONTEXTS[i] for i in which])
        # flipped labels make a validation set that gets worse as training succeeds
        self.label = torch.from_numpy(((label + 1) % 3 if flip_labels else label).astype(np.int64))

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.image[i], "context": self.context[i], "label": self.label[i]}


def loaders(n_train: int = 384, n_val: int = 192, flip_val: bool = False) -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(ToyPatches(n_train, 0), batch_size=32, shuffle=True),
        DataLoader(ToyPatches(n_val, 1, flip_labels=flip_val), batch_size=96),
    )


def small(variant: str = "film") -> ContextClassifier:
    return ContextClassifier(variant, width=4, context_hidden=16, dropout=0.0, seed=0)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_context_model_uses_context_and_the_shuffled_control_cannot():
    tr, va = loaders(n_train=512, n_val=256)
    acc = {}
    for shuffle in (False, True):
        model = small("film")
        train(model, tr, va, epochs=10, lr=1e-2, seed=0, device="cpu", patience=None, context_dropout=0.0,
              shuffle_context=shuffle, progress=False)
        logits, labels = predict_loader(model, va, device="cpu")
        acc[shuffle] = float(np.mean(logits.argmax(1) == labels))
    # Without a usable context no model can beat the image-only ceiling of 2/3.
    assert acc[False] > 0.8
    assert 0.55 < acc[True] < 0.72


class _CrashingLoader:
    """Delegates to a loader and raises in the middle of a chosen epoch (a killed job)."""

    def __init__(self, loader: DataLoader, crash_in_epoch: int):
        self.loader, self.crash_in_epoch, self.epoch = loader, crash_in_epoch, 0

    def __iter__(self):
        self.epoch += 1
        for i, batch in enumerate(self.loader):
            if self.epoch == self.crash_in_epoch and i == 2:
                raise RuntimeError("simulated crash")
            yield batch


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    tr, va = loaders()
    kw = dict(epochs=3, lr=5e-3, seed=3, device="cpu", progress=False, context_dropout=0.2, patience=None)
    straight = small()
    # progress bars on here, off below: they must not change the result
    h_straight = train(straight, tr, va, checkpoint_dir=tmp_path / "a", **{**kw, "progress": True})
    rng_before = torch.get_rng_state()
    crashed = small()
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, _CrashingLoader(tr, crash_in_epoch=3), va, checkpoint_dir=tmp_path / "b", **kw)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's generator is untouched
    resumed = small()
    h_resumed = train(resumed, tr, va, checkpoint_dir=tmp_path / "b", **kw)
    assert h_resumed["epoch"] == [1, 2, 3]
    assert h_resumed["val_nll"] == h_straight["val_nll"]
    assert _same_weights(resumed, straight)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["best.pt", "last.pt"]
    best = ContextClassifier.load(tmp_path / "b" / "best.pt", device="cpu")
    assert _same_weights(best, resumed)
    # a finished run resumes to nothing new; other settings in the same folder are refused
    again = small()
    assert train(again, tr, va, checkpoint_dir=tmp_path / "b", **kw)["epoch"] == [1, 2, 3]
    assert _same_weights(again, straight)
    with pytest.raises(ValueError, match="lr"):
        train(small(), tr, va, checkpoint_dir=tmp_path / "b", **{**kw, "lr": 1e-3})


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    tr, va = loaders(flip_val=True)
    model = small()
    h = train(model, tr, va, epochs=20, lr=1e-2, seed=0, device="cpu", patience=2, progress=False,
              checkpoint_dir=tmp_path)
    assert h["stopped_early"] and len(h["epoch"]) < 20
    assert len(h["epoch"]) == h["best_epoch"] + 2
    assert h["best_val_nll"] == min(h["val_nll"])
    assert _same_weights(model, ContextClassifier.load(tmp_path / "best.pt", device="cpu"))
    assert all(np.isfinite(h["patches_per_s"])) and h["world_size"] == 1


def test_bad_batches_and_arguments_are_named():
    tr, va = loaders(n_train=64, n_val=32)
    model = small()
    with pytest.raises(ValueError, match="epochs"):
        train(model, tr, va, epochs=0, progress=False)
    with pytest.raises(ValueError, match="context_dropout"):
        train(model, tr, va, epochs=1, context_dropout=2.0, progress=False)
    no_context = [{"image": torch.zeros(2, 1, 12, 12), "label": torch.zeros(2, dtype=torch.int64)}]
    with pytest.raises(ValueError, match="context"):
        train(model, no_context, va, epochs=1, device="cpu", progress=False)
    int_labels = [{"image": torch.zeros(2, 1, 12, 12), "context": torch.zeros(2, 13), "label": torch.zeros(2)}]
    with pytest.raises(ValueError, match="int64"):
        train(model, int_labels, va, epochs=1, device="cpu", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision needs CUDA")
def test_mixed_precision_on_cuda():
    tr, va = loaders()
    model = small()
    h = train(model, tr, va, epochs=3, lr=1e-2, seed=0, device="cuda", amp=True, progress=False)
    assert h["device"].startswith("cuda") and np.all(np.isfinite(h["val_nll"]))
    assert h["val_nll"][-1] < h["val_nll"][0]


_DDP_SCRIPT = """
import sys
import torch
sys.path.insert(0, {tests!r})
from test_defects_train import loaders, small
from tdmctx.defects.train import init_distributed, shutdown_distributed, train

torch.set_num_threads(1)
rank, world = init_distributed("gloo")  # a CPU test, even where CUDA exists
tr, va = loaders()
model = small()
history = train(model, tr, va, epochs=2, lr=5e-3, seed=0, device="cpu", progress=False,
                checkpoint_dir={out!r} + "/ckpt")
torch.save({{"state": model.state_dict(), "history": history, "world": world}}, {out!r} + f"/rank{{rank}}.pt")
shutdown_distributed()
"""


def test_ddp_two_processes_on_cpu_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path))))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["history"]["world_size"] == 2
    assert all(torch.equal(r0["state"][k], r1["state"][k]) for k in r0["state"])
    assert r0["history"]["val_nll"] == r1["history"]["val_nll"]  # reduced across ranks
    assert not all(torch.equal(r0["state"][k], v) for k, v in small().state_dict().items())  # it trained
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.pt", "last.pt"]
