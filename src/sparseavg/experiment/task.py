"""What a run trains and measures, as the engine sees it: a :class:`Task`.

The engine never touches data. It asks its task for a fresh model, for the trainer of its
ingredients, and for the numbers (test metrics, the held-out score of greedy soups, BatchNorm
recalibration, prediction ensembles). Two tasks:

- :class:`DataTask`: the built-in models, data sets and training loop a config names
  (``sparseavg run``);
- :class:`UserTask`: the user's model factory, training function, evaluation function and
  batches (``sparseavg.swamp(model_fn, train_fn, eval_fn, ...)``, :mod:`.own`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..averaging import (
    default_forward,
    evaluate_ensemble,
    has_batchnorm,
    recalibrate_bn,
    recalibrate_bn_on,
)
from ..averaging.batchnorm import Forward
from ..config import Config, ConfigError
from ..data import Dataset, available_datasets, load_dataset
from ..models import build_model, initialise
from ..parallel import FunctionTrainer, LoopTrainer, Trainer
from ..pruning import Mask
from ..training import Evaluation, TrainSettings, evaluate, steps_per_epoch, train
from ..training.custom import TrainFn, run_user_loop
from ..training.evaluate import macro_accuracy
from ..utils.files import CorruptFileError, load_tensors, safe_torch_load
from ..utils.seeding import make_generator
from ..utils.state import State, clone_state


class Task(Protocol):
    """The model, training and measurements of a run (see the module docstring)."""

    @property
    def trainer(self) -> Trainer:
        """How an ingredient trains."""
        ...

    def build(self, seed: int) -> nn.Module:
        """A new model on the training device, initialised from ``seed`` (the global RNG is
        left as it was)."""
        ...

    def pretrained(self, model: nn.Module) -> State:
        """The pretrained state cycle 0 starts from (``model.pretrained``), checked against
        ``model``."""
        ...

    def steps_per_epoch(self, batch_size: int, drop_last: bool) -> int:
        """Global steps in one epoch of batches of ``batch_size``, the last partial one
        skipped if ``drop_last`` (1 for a user's loop, whose steps are epochs)."""
        ...

    def train_ticket(
        self, model: nn.Module, settings: TrainSettings, seed: int, stop_step: int
    ) -> None:
        """Train the dense ``model`` in place from step 0 to ``stop_step`` (the rewind point).

        Raises:
            DivergenceError: the loss became NaN/inf.
        """
        ...

    def evaluate(self, model: nn.Module) -> Evaluation:
        """The test metrics of ``model``."""
        ...

    def score(self, model: nn.Module) -> float:
        """The held-out score greedy soups rank by (higher is better)."""
        ...

    def evaluate_ensemble(self, models: Sequence[nn.Module]) -> Evaluation:
        """The test metrics of the models' averaged predicted probabilities."""
        ...

    def recalibrate(self, model: nn.Module, tag: tuple[object, ...]) -> None:
        """Recompute ``model``'s BatchNorm statistics in place, per the run's ``bn.*``;
        ``tag`` names the call, so that its random draws are the same on every resume."""
        ...


def build_seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` with torch's CPU generator seeded by ``seed``, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


# -- the built-in models, data sets and loop -----------------------------------------------------


def load_data(config: Config, device: torch.device) -> Dataset:
    """The config's data set with its splits (validation part included) on ``device``."""
    known = available_datasets()
    if config.data.dataset not in known:
        raise ConfigError(f"data.dataset: {config.data.dataset!r} is not one of {', '.join(known)}")
    return load_dataset(
        config.data.dataset,
        data_dir=config.execution.data_dir or None,
        device=device,
        val_fraction=config.data.val_fraction,
        split_seed=config.data.split_seed,
        download=config.execution.download,
    )


def make_model(config: Config, data: Dataset, seed: int) -> nn.Module:
    """The config's model, initialised from ``seed`` by ``model.init`` without touching the
    global RNG."""
    m = config.model
    try:
        return build_seeded(
            lambda: initialise(
                build_model(m.name, data.num_classes, data.input_shape, **m.options), m.init
            ),
            seed,
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model: {err}") from None
    except (RuntimeError, MemoryError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"model: {config.model.name} with options {config.model.options} cannot be "
            f"allocated ({reason})"
        ) from None


def load_pretrained(path: str, model: nn.Module) -> State:
    """Read a pretrained state dict (safetensors, or a ``.pt`` read with ``weights_only``) and
    check it fits ``model``; a misfit lists the missing, unexpected and mis-shaped entries."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"model.pretrained: {p} is a directory, not a state_dict file")
    if not p.is_file():
        raise ConfigError(f"model.pretrained: {p} does not exist")
    if p.suffix == ".safetensors":
        state = load_tensors(p)
    else:
        try:
            obj = safe_torch_load(p)
        except CorruptFileError as err:
            raise ConfigError(f"model.pretrained: {err}") from None
        for key in ("state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ConfigError(f"model.pretrained: {p} does not hold a state_dict of tensors")
        state = dict(obj)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:6]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:6]}")
        if shapes:
            parts.append(f"shapes differ {shapes[:6]}")
        raise ConfigError(f"model.pretrained: {p} does not fit the model: " + "; ".join(parts))
    return {k: state[k].to(expected[k].dtype) for k in expected}


class DataTask:
    """The config's data set (on ``device``), model and :func:`~sparseavg.train`."""

    def __init__(self, config: Config, data: Dataset, device: torch.device) -> None:
        self.config, self.data, self.device = config, data, device
        self._trainer = LoopTrainer(data.train)

    @property
    def trainer(self) -> Trainer:
        return self._trainer

    def build(self, seed: int) -> nn.Module:
        return make_model(self.config, self.data, seed).to(self.device)

    def pretrained(self, model: nn.Module) -> State:
        return load_pretrained(self.config.model.pretrained, model)

    def steps_per_epoch(self, batch_size: int, drop_last: bool) -> int:
        return steps_per_epoch(self.data.train, batch_size, drop_last)

    def train_ticket(
        self, model: nn.Module, settings: TrainSettings, seed: int, stop_step: int
    ) -> None:
        train(model, self.data.train, settings, seed=seed, stop_step=stop_step)

    def evaluate(self, model: nn.Module) -> Evaluation:
        return evaluate(model, self.data.test)

    def score(self, model: nn.Module) -> float:
        """Held-out accuracy per ``ingredients.soup_metric``: the mean of per-class accuracies
        (``"macro"``, the SMS code's) or the share of samples right (``"accuracy"``)."""
        if self.data.val is None:
            raise ConfigError("ingredients.combine = 'greedy' needs data.val_fraction > 0")
        if self.config.ingredients.soup_metric == "accuracy":
            return evaluate(model, self.data.val).accuracy
        return macro_accuracy(model, self.data.val, self.data.num_classes)

    def evaluate_ensemble(self, models: Sequence[nn.Module]) -> Evaluation:
        return evaluate_ensemble(models, self.data.test)

    def recalibrate(self, model: nn.Module, tag: tuple[object, ...]) -> None:
        bn = self.config.bn
        recalibrate_bn(
            model,
            self.data.train,
            num_batches=bn.batches or None,
            batch_size=self.config.train.batch_size,
            momentum=bn.momentum or None,
            augment=bn.augment,
            generator=make_generator(self.config.seed, "bn", *tag) if bn.augment else None,
        )


# -- the user's model, loop and metrics ----------------------------------------------------------

#: ``eval_fn(model) -> {"accuracy": ..., "loss": ..., ...}``
EvalFn = Callable[[nn.Module], Mapping[str, Any]]
#: ``score_fn(model) -> float``: a held-out score, higher is better (greedy soups)
ScoreFn = Callable[[nn.Module], float]


class EnsembleModule(nn.Module):
    """The prediction ensemble of ``models`` as one module, for a user's ``eval_fn``: its
    output is the log of the members' averaged softmax probabilities (valid logits: their
    softmax is the averaged probabilities). A member whose output has ``.logits`` (Hugging Face
    model outputs) gets them replaced in the first member's output, and its ``loss`` becomes
    the ensemble's mean negative log-likelihood of the ``labels`` passed to the call (``None``
    without labels)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = [m(*args, **kwargs) for m in self.members]
        logits = [_logits(o) for o in outputs]
        probs = torch.stack([t.float().softmax(dim=-1) for t in logits]).mean(dim=0)
        averaged = torch.log(probs.clamp_min(1e-12))
        first = outputs[0]
        if isinstance(first, Tensor):
            return averaged
        first.logits = averaged
        if getattr(first, "loss", None) is not None:
            labels = kwargs.get("labels")
            first.loss = (
                None
                if labels is None
                else F.nll_loss(averaged.reshape(-1, averaged.shape[-1]), labels.reshape(-1))
            )
        return first


def _logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"an ensemble averages logits; the model returned {type(output).__name__}, which is "
        "neither a tensor nor has .logits"
    )


NEEDS_SCORE_FN = (
    "ingredients.combine = 'greedy' ranks candidate soups on held-out data: pass score_fn "
    "(never the test metrics of eval_fn)"
)


def needs_bn_batches(model: nn.Module) -> str:
    return (
        f"{type(model).__name__} has BatchNorm layers, whose statistics the averaged models "
        "need recomputed: pass bn_batches (e.g. your training DataLoader), or set "
        "bn.recalibrate = 'never' to keep the statistics training left"
    )


def example_input(task: Task) -> Any | None:
    """An input batch to trace the task's model with (channel groups, the slim export): two
    zero samples of the data set's shape for the built-in data, the user's ``example`` for a
    :class:`UserTask`, else ``None``."""
    if isinstance(task, DataTask):
        return torch.zeros(2, *task.data.input_shape, device=task.device)
    return getattr(task, "example", None)


@dataclass(frozen=True)
class UserTask:
    """A run of the user's own model and loop.

    Attributes:
        model_fn: ``model_fn() -> nn.Module`` on its training device; called with torch's
            generator seeded (each lineage's initialisation differs) and, for a pretrained
            start, expected to load the same weights every time.
        train_fn: ``train_fn(model, mask, seed, settings)`` (:class:`~sparseavg.LoopSettings`).
        eval_fn: ``eval_fn(model) -> dict`` of test metrics, called in eval mode under
            ``torch.no_grad()``; it holds ``metric`` and, if it has one, ``"loss"``.
        metric: the key of ``eval_fn``'s dict reported as the result (``accuracy`` column)
            and compared by greedy soups when no ``score_fn`` is given.
        bn_batches: batches for BatchNorm recalibration: a re-iterable (a DataLoader, a list)
            or a function returning a new iterator; needed only if the model has BatchNorm.
        forward: ``forward(model, batch)`` for those batches (default: ``model(**batch)`` for
            dicts, ``model(batch[0])`` for tuples, ``model(batch)`` for tensors).
        score_fn: ``score_fn(model) -> float`` on held-out data, for greedy soups.
        example: an input batch of the model (a tensor, or a tuple of positional inputs),
            which ``pruning.granularity = "channel"`` traces to find the coupled channels.
    """

    model_fn: Callable[[], nn.Module]
    train_fn: TrainFn
    eval_fn: EvalFn
    metric: str = "accuracy"
    bn_batches: Iterable[Any] | Callable[[], Iterable[Any]] | None = None
    forward: Forward = default_forward
    score_fn: ScoreFn | None = None
    bn_momentum: float | None = None
    bn_limit: int | None = None
    example: Any = None

    @property
    def trainer(self) -> Trainer:
        return FunctionTrainer(self.train_fn)

    def build(self, seed: int) -> nn.Module:
        model = build_seeded(self.model_fn, seed)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model_fn returned {type(model).__name__}, not an nn.Module")
        return model

    def pretrained(self, model: nn.Module) -> State:
        return clone_state(model, device="cpu")

    def steps_per_epoch(self, batch_size: int, drop_last: bool) -> int:
        return 1

    def train_ticket(
        self, model: nn.Module, settings: TrainSettings, seed: int, stop_step: int
    ) -> None:
        dense = Mask({})  # nothing pruned: attach(model, mask, optimizer) holds no weight
        run_user_loop(self.train_fn, model, dense, seed, settings, stop_epoch=stop_step, index=-1)

    def evaluate(self, model: nn.Module) -> Evaluation:
        values = _call_eval(self.eval_fn, model)
        if self.metric not in values:
            raise KeyError(
                f"eval_fn returned {sorted(values)}; it must return the metric {self.metric!r} "
                "(pass metric= to name another key)"
            )
        loss = values.get("loss", math.nan)
        return Evaluation(
            accuracy=float(values[self.metric]),
            loss=float(loss) if loss is not None else math.nan,
            count=0,
            metrics=values,
        )

    def score(self, model: nn.Module) -> float:
        if self.score_fn is None:
            raise ConfigError(NEEDS_SCORE_FN)
        return float(_in_eval(self.score_fn, model))

    def evaluate_ensemble(self, models: Sequence[nn.Module]) -> Evaluation:
        return self.evaluate(EnsembleModule(models))

    def recalibrate(self, model: nn.Module, tag: tuple[object, ...]) -> None:
        if not has_batchnorm(model):
            return
        if self.bn_batches is None:
            raise ConfigError(needs_bn_batches(model))
        batches = self.bn_batches() if callable(self.bn_batches) else self.bn_batches
        if self.bn_limit is not None:
            batches = itertools.islice(batches, self.bn_limit)
        recalibrate_bn_on(model, batches, momentum=self.bn_momentum, forward=self.forward)


def _in_eval(fn: Callable[[nn.Module], Any], model: nn.Module) -> Any:
    """``fn(model)`` in eval mode without gradients; the model's mode is restored after."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return fn(model)
    finally:
        model.train(was)


def _call_eval(eval_fn: EvalFn, model: nn.Module) -> dict[str, float]:
    values = _in_eval(eval_fn, model)
    if not isinstance(values, Mapping):
        raise TypeError(f"eval_fn must return a dict of metrics, not {type(values).__name__}")
    return {str(k): float(v) for k, v in values.items() if isinstance(v, int | float | Tensor)}
