"""Training a head on a frozen encoder: recipes (optimiser, learning rate, schedule), the loop, resumption.

A *recipe* names every hyper-parameter of one published protocol; all of them are written into the result
record. The default is the paper's own (`partaware`, from `patch_lincls.py` of the official code):

| recipe          | optimiser                          | lr                                   | schedule                                   | epochs | batch  | reference |
|-----------------|------------------------------------|--------------------------------------|--------------------------------------------|--------|--------|-----------|
| `partaware`     | SGD m 0.9, wd 0                    | base x B/256, base 0.1 linear / 0.01 attentive | per-epoch cosine, no warmup       | 90     | 1024   | JiePKU/understand-ssl-part-aware patch_lincls.py |
| `mae-linear`    | LARS (MAE util/lars.py), wd 0      | 0.1 x B/256                          | per-iteration half-cosine, warmup 10 ep    | 90     | 16384  | facebookresearch/mae main_linprobe.py |
| `cae-linear`    | LARS, wd 0 (CAE's run_linear.py is MAE's main_linprobe) | 0.1 x B/256           | as `mae-linear`                            | 90     | 16384  | lxtGH/CAE tools/run_linear.py, scripts/cae_base_800e.sh |
| `cae-attentive` | SGD m 0.9 **nesterov**, wd 0       | 0.4 absolute (no batch scaling)      | per-iteration cosine (BEiT `cosine_scheduler`), warmup 10 ep from 0, min 1e-6 | 90 | 8192 (256 x 32) | lxtGH/CAE tools/run_attentive.py, furnace/optim_factory.py |
| `vjepa`         | AdamW (0.9, 0.999), wd 1e-3 -> 1e-6 cosine (not on biases / 1-D), grad clip 1.0 | 1e-3 absolute | per-iteration cosine 1e-3 -> 0, no warmup | 20 | 1024 (16 x 64) | facebookresearch/jepa evals/image_classification_frozen/eval.py, configs/evals/vitl16_in1k.yaml |

Things no recipe changes (all recorded): cross-entropy loss; no data augmentation (features are computed
once with the task's fixed transforms, so MAE/CAE's RandomResizedCrop+flip and V-JEPA's AutoAugment are
*not* reproduced); evaluation on the whole evaluation split after every epoch; bf16 autocast on CUDA, fp32
on CPU. Evaluation batches: 256 (PartAware's val loader), 384 (CAE: 1.5 x 256), the training batch
otherwise; they matter only for heads that normalise with batch statistics. Model selection: both the best epoch's top-1 (the reference prints ``best_acc1``, the paper's
number) and the last epoch's top-1 are returned, never one under an ambiguous name.

Training state (head, optimiser, scheduler position, finished epochs, per-epoch accuracies, best so far)
is written atomically after every epoch to ``<PARTPROBE_HOME>/train_state/<fingerprint>.pt``; calling
`train_probe` again with the same fingerprint resumes after the last finished epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from probes import paths
from probes.fileio import atomic_path
from probes.results import config_hash

STATE_FORMAT = "partprobe-train-state-1"


# -------------------------------------------------------------------------------------------- recipes
@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str               # "sgd" | "sgd-nesterov" | "lars" | "adamw"
    lr_scaling: str              # "linear": lr = base_lr x batch / 256;  "none": lr is absolute
    base_lr: float               # the number the reference's command line gives (--lr / --blr)
    schedule: str                # "cosine-epoch" | "cosine-iter-mae" | "cosine-iter-beit" | "cosine-iter-vjepa"
    epochs: int
    batch_size: int
    eval_batch_size: int         # matters for heads that normalise with the evaluation batch's statistics
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    weight_decay_end: float | None = None     # cosine weight-decay schedule end value (V-JEPA); None = constant
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None
    drop_last: bool = False
    source: str = ""

    @property
    def lr(self) -> float:
        """The peak learning rate actually used."""
        return self.base_lr * self.batch_size / 256 if self.lr_scaling == "linear" else self.base_lr

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["lr"] = self.lr
        return out


OPTIMIZERS = ("sgd", "sgd-nesterov", "lars", "adamw")
SCHEDULES = ("cosine-epoch", "cosine-iter-mae", "cosine-iter-beit", "cosine-iter-vjepa")

PRESETS: dict[str, Recipe] = {
    # patch_lincls.py: SGD(init_lr = args.lr * batch / 256, momentum 0.9, wd 0); adjust_learning_rate once per
    # epoch: init_lr * 0.5 * (1 + cos(pi * epoch / epochs)); batch 1024; val loader batch 256.
    # base_lr is 0.1 for the linear head (command.sh) and 0.01 for the attentive head
    # (docs/protocols.md#part-classification-recipe).
    "partaware": Recipe(name="partaware", optimizer="sgd", lr_scaling="linear", base_lr=0.1,
                        schedule="cosine-epoch", epochs=90, batch_size=1024, eval_batch_size=256,
                        source="JiePKU/understand-ssl-part-aware retrieval-classification/patch_lincls.py"),
    # main_linprobe.py: LARS(head params, lr = blr * eff_batch / 256, wd 0); lr_sched.adjust_learning_rate per
    # iteration (linear warmup 10 epochs, then half-cycle cosine to min_lr 0); batch 512 x 32; drop_last.
    "mae-linear": Recipe(name="mae-linear", optimizer="lars", lr_scaling="linear", base_lr=0.1,
                         schedule="cosine-iter-mae", epochs=90, batch_size=16384, eval_batch_size=16384,
                         warmup_epochs=10, drop_last=True,
                         source="facebookresearch/mae main_linprobe.py, util/lars.py, util/lr_sched.py"),
    "cae-linear": Recipe(name="cae-linear", optimizer="lars", lr_scaling="linear", base_lr=0.1,
                         schedule="cosine-iter-mae", epochs=90, batch_size=16384, eval_batch_size=16384,
                         warmup_epochs=10, drop_last=True,
                         source="lxtGH/CAE tools/run_linear.py (MAE main_linprobe), scripts/cae_base_800e.sh"),
    # run_attentive.py + cae_base_800e.sh: --opt sgd (optim_factory: SGD nesterov=True) --momentum 0.9 --lr 0.4
    # (used as is) --warmup_epochs 10 --epochs 90 --weight_decay 0, batch 256 x 32 GPUs, min_lr 1e-6,
    # utils.cosine_scheduler per iteration; train drop_last; eval batch 1.5 x 256 per GPU.
    "cae-attentive": Recipe(name="cae-attentive", optimizer="sgd-nesterov", lr_scaling="none", base_lr=0.4,
                            schedule="cosine-iter-beit", epochs=90, batch_size=8192, eval_batch_size=384,
                            warmup_epochs=10, min_lr=1e-6, drop_last=True,
                            source="lxtGH/CAE tools/run_attentive.py, furnace/optim_factory.py, scripts/cae_base_800e.sh"),
    # eval.py init_opt: AdamW, bias/1-D params without wd; WarmupCosineSchedule(start_lr=lr=1e-3, final 0,
    # warmup 0) and CosineWDSchedule(1e-3 -> final_wd 1e-6) stepped before every iteration; grad clip 1.0;
    # batch 16 x 64 GPUs; 20 epochs; no drop_last.
    "vjepa": Recipe(name="vjepa", optimizer="adamw", lr_scaling="none", base_lr=1e-3,
                    schedule="cosine-iter-vjepa", epochs=20, batch_size=1024, eval_batch_size=1024,
                    weight_decay=1e-3, weight_decay_end=1e-6, grad_clip=1.0,
                    source="facebookresearch/jepa evals/image_classification_frozen/eval.py, configs/evals/vitl16_in1k.yaml"),
}

# The PartAware base learning rates differ by head family (command.sh / docs/protocols.md#part-classification-recipe).
PARTAWARE_BASE_LR = {"linear": 0.1, "attentive": 0.01}


def resolve_recipe(preset: str, head_family: str, **overrides: Any) -> Recipe:
    """The preset's recipe for a ``head_family`` ("linear" | "attentive") with non-None overrides applied.

    Overrides use Recipe field names (``epochs``, ``batch_size``, ``eval_batch_size``, ``base_lr``, ...).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if head_family not in PARTAWARE_BASE_LR:
        raise ValueError(f"head family must be 'linear' or 'attentive', got {head_family!r}")
    recipe = PRESETS[preset]
    if preset == "partaware":
        recipe = dataclasses.replace(recipe, base_lr=PARTAWARE_BASE_LR[head_family])
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown recipe field(s) {unknown}; known: {sorted(fields)}")
    recipe = dataclasses.replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
    validate_recipe(recipe)
    return recipe


def validate_recipe(recipe: Recipe) -> None:
    if recipe.optimizer not in OPTIMIZERS:
        raise ValueError(f"recipe {recipe.name!r}: optimizer {recipe.optimizer!r} is not one of {OPTIMIZERS}")
    if recipe.schedule not in SCHEDULES:
        raise ValueError(f"recipe {recipe.name!r}: schedule {recipe.schedule!r} is not one of {SCHEDULES}")
    if recipe.lr_scaling not in ("linear", "none"):
        raise ValueError(f"recipe {recipe.name!r}: lr_scaling must be 'linear' or 'none'")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if int(getattr(recipe, name)) < 1:
            raise ValueError(f"recipe {recipe.name!r}: {name} must be >= 1, got {getattr(recipe, name)}")
    if not recipe.base_lr > 0:
        raise ValueError(f"recipe {recipe.name!r}: learning rate must be > 0, got {recipe.base_lr}")
    if not 0 <= recipe.warmup_epochs < recipe.epochs:
        raise ValueError(f"recipe {recipe.name!r}: warmup_epochs {recipe.warmup_epochs} must be in [0, epochs)")


# ------------------------------------------------------------------------------------------- schedules
def lr_schedule(recipe: Recipe, iters_per_epoch: int) -> list[float]:
    """Learning rate for every training iteration (``epochs x iters_per_epoch`` values), as the reference
    computes it."""
    E, ipe, lr, min_lr = recipe.epochs, iters_per_epoch, recipe.lr, recipe.min_lr
    total = E * ipe
    if recipe.schedule == "cosine-epoch":
        # patch_lincls.adjust_learning_rate, called at the start of every epoch
        return [lr * 0.5 * (1.0 + math.cos(math.pi * (it // ipe) / E)) for it in range(total)]
    if recipe.schedule == "cosine-iter-mae":
        # mae util/lr_sched.adjust_learning_rate(epoch = data_iter_step / len(loader) + epoch)
        values = []
        for it in range(total):
            t = it / ipe
            if t < recipe.warmup_epochs:
                values.append(lr * t / recipe.warmup_epochs)
            else:
                progress = (t - recipe.warmup_epochs) / (E - recipe.warmup_epochs)
                values.append(min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))
        return values
    if recipe.schedule == "cosine-iter-beit":
        # BEiT/CAE utils.cosine_scheduler(base, final, epochs, ipe, warmup_epochs, start_warmup_value=0)
        warmup_iters = int(recipe.warmup_epochs * ipe)
        if warmup_iters == 1:
            warmup = [0.0]
        else:
            warmup = [lr * i / (warmup_iters - 1) for i in range(warmup_iters)]   # np.linspace(0, lr, n)
        n = total - warmup_iters
        return warmup + [min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * i / n)) for i in range(n)]
    if recipe.schedule == "cosine-iter-vjepa":
        # jepa WarmupCosineSchedule: step() before each iteration, so iteration it uses _step = it + 1
        warmup_steps = int(recipe.warmup_epochs * ipe)
        t_max = total - warmup_steps
        values = []
        for it in range(total):
            step = it + 1
            if step < warmup_steps:
                values.append(lr * step / max(1, warmup_steps))   # start_lr = 0 would be the only other choice
            else:
                progress = (step - warmup_steps) / max(1, t_max)
                values.append(max(min_lr, min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))))
        return values
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


def wd_schedule(recipe: Recipe, iters_per_epoch: int) -> list[float]:
    """Weight decay for every training iteration: constant, or V-JEPA's CosineWDSchedule (stepped before
    each iteration, clamped at the final value)."""
    total = recipe.epochs * iters_per_epoch
    if recipe.weight_decay_end is None:
        return [recipe.weight_decay] * total
    ref, final = recipe.weight_decay, recipe.weight_decay_end
    values = []
    for it in range(total):
        wd = final + (ref - final) * 0.5 * (1.0 + math.cos(math.pi * (it + 1) / total))
        values.append(max(final, wd) if final <= ref else min(final, wd))
    return values


# ------------------------------------------------------------------------------------------ optimisers
class LARS(torch.optim.Optimizer):
    """MAE `util/lars.py`: SGD with momentum and a layer-wise trust ratio for parameters with ndim > 1
    (weight decay also only on those); biases and normalisation parameters take plain momentum SGD."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:
                    dp = dp.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, group["trust_coefficient"] * param_norm / update_norm, one),
                                    one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])


def build_optimizer(recipe: Recipe, head: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in head.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd-nesterov":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                               nesterov=True)
    if recipe.optimizer == "lars":
        return LARS(params, lr=recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum)
    if recipe.optimizer == "adamw":
        # V-JEPA init_opt: no weight decay on biases and 1-D parameters; only the first group is scheduled
        decay = [p for n, p in head.named_parameters() if p.requires_grad and "bias" not in n and p.ndim != 1]
        no_decay = [p for n, p in head.named_parameters() if p.requires_grad and ("bias" in n or p.ndim == 1)]
        groups = [{"params": decay, "weight_decay": recipe.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0, "wd_exclude": True}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=recipe.lr, betas=tuple(recipe.betas))
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


# ---------------------------------------------------------------------------------------- data sources
class TensorSource:
    """Inputs already computed (cached features or token maps) ``[N, ...]`` with labels ``[N]``."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        if len(inputs) != len(labels):
            raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
        self.inputs = inputs
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def iterate(self, batches: Sequence[Sequence[int]], device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in batches:
            idx = torch.as_tensor(batch, dtype=torch.long)
            yield self.inputs[idx].to(device, torch.float32), self.labels[idx].to(device)


class EncoderSource:
    """Inputs computed on the fly: the items of ``view`` through the frozen ``encoder`` (probes.features.stream),
    one batch at a time; used when the token maps do not fit the disk budget."""

    def __init__(self, encoder, view, feature: str, block: int | None = None, drop_prefix: int = 0,
                 num_workers: int = 0):
        self.encoder, self.view, self.feature, self.block = encoder, view, feature, block
        self.labels = torch.as_tensor(view.labels, dtype=torch.long)
        self.drop_prefix, self.num_workers = drop_prefix, num_workers

    def __len__(self) -> int:
        return len(self.labels)

    def iterate(self, batches: Sequence[Sequence[int]], device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from probes.features import stream

        outputs = stream(self.encoder, self.view, self.feature, self.block, batches, self.num_workers)
        for x, batch in zip(outputs, batches):
            if self.drop_prefix:
                x = x[:, self.drop_prefix:]
            yield x.to(device, torch.float32), self.labels[torch.as_tensor(batch, dtype=torch.long)].to(device)


def make_batches(order: Sequence[int], batch_size: int, drop_last: bool, merge_singleton: bool) -> list[list[int]]:
    """Consecutive batches of ``order``. With ``merge_singleton`` a final batch of one sample joins the batch
    before it: a batch-statistics normalisation cannot normalise a single sample (the reference would crash)."""
    order = [int(i) for i in order]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if merge_singleton and len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


# ---------------------------------------------------------------------------------------- results
@dataclass
class ProbeResult:
    """Per-epoch evaluation accuracies (percent) and the two selections reported."""

    history: list[dict[str, float]] = field(default_factory=list)   # [{"epoch": 1-based, "top1", "top5"?, "train_loss", "lr"}]
    resumed_from_epoch: int = 0                                      # finished epochs found on disk at the start

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def selection(self) -> dict[str, float]:
        return best_and_last([h["top1"] for h in self.history],
                             [h["top5"] for h in self.history] if self.history and "top5" in self.history[0] else None)


def best_and_last(top1: Sequence[float], top5: Sequence[float] | None = None) -> dict[str, float]:
    """``top1_best`` = the maximum over epochs (the first epoch reaching it, as ``acc1 > best_acc1`` picks),
    ``best_epoch`` (1-based), ``top1_last`` = the final epoch's; top-5 at those same two epochs."""
    if not top1:
        raise ValueError("no epoch was evaluated")
    best_index = max(range(len(top1)), key=lambda i: (top1[i], -i))
    out = {"top1_best": float(top1[best_index]), "best_epoch": best_index + 1, "top1_last": float(top1[-1])}
    if top5 is not None:
        out["top5_at_best"] = float(top5[best_index])
        out["top5_last"] = float(top5[-1])
    return out


# ----------------------------------------------------------------------------------------- the loop
def default_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (as V-JEPA/CAE train their heads in reduced precision); fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_name(device: torch.device) -> str:
    return "bf16-autocast" if device.type == "cuda" else "fp32"


def state_path_for(fingerprint: dict[str, Any]) -> Path:
    return paths.home() / "train_state" / f"{config_hash(fingerprint)}.pt"


@torch.no_grad()
def evaluate(head: nn.Module, source, recipe: Recipe, device: torch.device, num_classes: int) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) on ``source`` in its order, in evaluation
    batches of ``recipe.eval_batch_size`` (the batch composition matters for batch-statistics heads)."""
    head.eval()
    batches = make_batches(range(len(source)), recipe.eval_batch_size, drop_last=False,
                           merge_singleton=getattr(head, "uses_batch_stats", False))
    correct1 = correct5 = 0
    for x, y in source.iterate(batches, device):
        with autocast(device):
            logits = head(x)
        logits = logits.float()
        correct1 += (logits.argmax(1) == y).sum().item()
        if num_classes > 5:
            correct5 += (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum().item()
    out = {"top1": 100.0 * correct1 / len(source)}
    if num_classes > 5:
        out["top5"] = 100.0 * correct5 / len(source)
    return out


def train_probe(head: nn.Module, train, evaluation, recipe: Recipe, *, num_classes: int, seed: int = 0,
                device: str | torch.device | None = None, state_path: str | Path | None = None,
                fingerprint: dict[str, Any] | None = None, stop_after_epochs: int | None = None,
                progress: bool = True) -> ProbeResult:
    """Train ``head`` on ``train`` with ``recipe``, evaluating on ``evaluation`` after every epoch.

    ``train``/``evaluation`` are a `TensorSource` or an `EncoderSource`. Shuffling uses a generator seeded
    with ``(seed, epoch)``, so an interrupted run resumed from its state file follows exactly the same
    trajectory. With ``state_path`` (or a ``fingerprint`` from which the path is derived) the state is saved
    atomically after every epoch and an existing state is resumed. ``stop_after_epochs`` ends this call
    after that many newly trained epochs (for preemptible jobs); the state file keeps the progress.
    """
    validate_recipe(recipe)
    device = default_device(device)
    if len(train) == 0 or len(evaluation) == 0:
        raise ValueError(f"empty split: {len(train)} training and {len(evaluation)} evaluation samples")
    if recipe.drop_last and len(train) < recipe.batch_size:
        raise ValueError(f"batch size {recipe.batch_size} exceeds the {len(train)} training samples and recipe "
                         f"{recipe.name!r} drops the incomplete last batch: nothing would train; pass a smaller batch size")
    labels_seen = torch.unique(train.labels)
    if labels_seen.min() < 0 or labels_seen.max() >= num_classes:
        raise ValueError(f"training labels must lie in [0, {num_classes}), found {labels_seen.min()}..{labels_seen.max()}")
    merge = getattr(head, "uses_batch_stats", False)
    iters_per_epoch = len(make_batches(range(len(train)), recipe.batch_size, recipe.drop_last, merge))
    lrs, wds = lr_schedule(recipe, iters_per_epoch), wd_schedule(recipe, iters_per_epoch)

    head.to(device)
    optimizer = build_optimizer(recipe, head)
    if state_path is None and fingerprint is not None:
        state_path = state_path_for(fingerprint)
    fingerprint_hash = config_hash(fingerprint) if fingerprint is not None else None
    result = ProbeResult()
    best = {"top1": -1.0, "epoch": 0}
    if state_path is not None and Path(state_path).is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{state_path}: not a partprobe training state (format {state.get('format')!r})")
        if fingerprint_hash is not None and state.get("fingerprint") != fingerprint_hash:
            raise ValueError(f"{state_path}: saved for configuration {state.get('fingerprint')}, "
                             f"not this one ({fingerprint_hash}); delete the file to start over")
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        result.history = list(state["history"])
        best = dict(state["best"])
        result.resumed_from_epoch = int(state["epoch"])

    start = result.epochs_done
    stop = recipe.epochs if stop_after_epochs is None else min(recipe.epochs, start + stop_after_epochs)
    bar = tqdm(range(start, stop), desc=f"{recipe.name} {type(head).__name__}", unit="epoch",
               initial=start, total=recipe.epochs, disable=not progress, leave=False)
    for epoch in bar:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(train), generator=generator).tolist()
        batches = make_batches(order, recipe.batch_size, recipe.drop_last, merge)
        head.train()
        loss_sum, seen = 0.0, 0
        steps = tqdm(train.iterate(batches, device), total=len(batches), desc=f"epoch {epoch + 1}", unit="batch",
                     leave=False, disable=not progress or len(batches) < 50)
        for i, (x, y) in enumerate(steps):
            it = epoch * iters_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = lrs[it]
                if not group.get("wd_exclude", False) and recipe.weight_decay_end is not None:
                    group["weight_decay"] = wds[it]
            with autocast(device):
                logits = head(x)
            loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}, iteration {i}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(head.parameters(), recipe.grad_clip)
            optimizer.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
        metrics = evaluate(head, evaluation, recipe, device, num_classes)
        entry = {"epoch": epoch + 1, **metrics, "train_loss": loss_sum / max(seen, 1),
                 "lr": lrs[epoch * iters_per_epoch]}   # the epoch's first learning rate, for the audit trail
        result.history.append(entry)
        if metrics["top1"] > best["top1"]:
            best = {"top1": metrics["top1"], "epoch": epoch + 1}
        bar.set_postfix(top1=f"{metrics['top1']:.2f}", best=f"{best['top1']:.2f}")
        if state_path is not None:
            save_state(state_path, {
                "format": STATE_FORMAT, "fingerprint": fingerprint_hash, "epoch": epoch + 1,
                "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": {"iteration": (epoch + 1) * iters_per_epoch, "iters_per_epoch": iters_per_epoch,
                              "lr_next": lrs[min((epoch + 1) * iters_per_epoch, len(lrs) - 1)]},
                "history": result.history, "best": best, "recipe": recipe.to_dict(),
            })
    bar.close()
    return result


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write a training state (a reader never sees a partial file)."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return Path(path)
