"""What the reproduction study runs: two settings, the methods compared in each, and the
experiments each paper proposes first. Plain values only; :mod:`.run` turns them into runs.

The budget is fixed per setting and shared by every method (never tuned per method): every
training run (an IMP model, a SWAMP particle, a soup ingredient) trains ``train.epochs``
epochs with the same optimizer, schedule and batch size; what differs between methods is
only what the method is (how many models a cycle trains, SWA or not, rewinding or
fine-tuning, how the models are combined). IMP+ retrains 3x longer, the compute of a 3-soup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config, merge
from ..recipes import resolve_config

#: the seeds of every group; the paired tests pair runs by seed
STUDY_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Group:
    """One line of a table: a method (or a variant of one) run over the study's seeds.

    ``section`` says which part of RESULTS.md it belongs to (``"main"``, or one of the
    experiments: ``"particles"``, ``"sms-vary"``, ``"sms-one-shot"``, ``"sms-tiny"``);
    ``values`` are merged into the setting's base.
    """

    label: str
    section: str
    values: dict[str, Any]
    analyses: tuple[str, ...] = ()


#: the comparisons of the main table: (method, its baseline), paired by seed
PAIRED_TESTS: tuple[tuple[str, str], ...] = (
    ("SWAMP (N=4)", "IMP"),
    ("SWAMP (N=4)", "2-ensemble of IMP"),
    ("SWAMP (N=4)", "IMP+SWA"),
    ("SWAMP (N=4)", "SWAMP without SWA"),
    ("SMS uniform (m=3)", "IMP+ (3x retraining)"),
    ("SMS greedy (m=3)", "IMP+ (3x retraining)"),
)

#: the study's documents under docs/: file name -> title; a setting names the one it is in
DOCUMENTS: dict[str, str] = {
    "RESULTS.md": "Reproduction study",
    "RESULTS-during-training.md": "Pruning during training, and averaging on top of it",
    "RESULTS-channels.md": "Channel pruning with averaging",
}


@dataclass(frozen=True)
class Setting:
    """A data set, a model and the one budget every method of it trains with.

    ``paired`` are the comparisons of its main table (method, baseline), paired by seed;
    ``document`` the file of :data:`DOCUMENTS` it is written to (a call of the study that
    chooses some settings rewrites only their documents); ``final_only`` compares each run's
    last model alone (methods that reach their target in one run, whose cycles are not
    sparsity levels shared across methods)."""

    name: str
    title: str
    base: dict[str, Any]
    why: str
    groups: tuple[Group, ...] = field(default_factory=tuple)
    paired: tuple[tuple[str, str], ...] = PAIRED_TESTS
    document: str = "RESULTS.md"
    final_only: bool = False

    def configs(self, group: Group, seeds: tuple[int, ...] = STUDY_SEEDS) -> list[Config]:
        """The resolved configs of ``group``, one per seed. A group with its own target
        (``target_sparsity`` or ``pattern``) drops the base's ``fraction``, which the target
        replaces."""
        values = merge(self.base, group.values)
        if {"target_sparsity", "pattern"} & set(group.values.get("pruning", {})):
            pruning = {k: v for k, v in values["pruning"].items() if k != "fraction"}
            values = {**values, "pruning": pruning}
        return [resolve_config(merge(values, {"seed": s})) for s in seeds]

    def group(self, label: str) -> Group:
        for g in self.groups:
            if g.label == label:
                return g
        raise KeyError(f"{self.name}: no group {label!r}")


def _main_methods(analyses: dict[str, tuple[str, ...]]) -> tuple[Group, ...]:
    methods: dict[str, dict[str, Any]] = {
        "IMP": {"recipe": "imp"},
        "IMP+SWA": {"recipe": "imp-swa"},
        "SWAMP (N=4)": {"recipe": "swamp", "ingredients": {"count": 4}},
        "SWAMP without SWA": {"recipe": "swamp-no-swa", "ingredients": {"count": 4}},
        "SMS uniform (m=3)": {"recipe": "sms", "ingredients": {"count": 3, "combine": "uniform"}},
        "SMS greedy (m=3)": {"recipe": "sms", "ingredients": {"count": 3, "combine": "greedy"}},
        "IMP+ (3x retraining)": {"recipe": "imp+", "ingredients": {"length_factor": 3.0}},
        "2-ensemble of IMP": {"recipe": "ensemble", "ingredients": {"count": 2}},
    }
    return tuple(Group(k, "main", v, analyses.get(k, ())) for k, v in methods.items())


_TINY = {
    "recipe": "sms",
    "model": {"options": {"width": 8}},
    "train": {"epochs": 1},
    "pruning": {"cycles": 1, "fraction": 0.4, "rewind_epochs": 0.0},
    "ingredients": {"count": 3, "combine": "uniform"},
}

_MNIST1D_EXPERIMENTS: tuple[Group, ...] = (
    Group("SWAMP (N=1)", "particles", {"recipe": "swamp", "ingredients": {"count": 1}}),
    Group("SWAMP (N=2)", "particles", {"recipe": "swamp", "ingredients": {"count": 2}}),
    Group("SWAMP (N=8)", "particles", {"recipe": "swamp", "ingredients": {"count": 8}}),
    Group(
        "SMS varying weight decay (m=3)",
        "sms-vary",
        {
            "recipe": "sms",
            "ingredients": {"count": 3, "combine": "uniform", "vary": "weight_decay"},
        },
    ),
    Group(
        "SMS one-shot 90 %, uniform",
        "sms-one-shot",
        {
            "recipe": "sms",
            "pruning": {"cycles": 1, "target_sparsity": 0.9},
            "ingredients": {"count": 3, "combine": "uniform"},
        },
        ("barrier",),
    ),
    Group(
        "SMS one-shot 90 %, greedy",
        "sms-one-shot",
        {
            "recipe": "sms",
            "pruning": {"cycles": 1, "target_sparsity": 0.9},
            "ingredients": {"count": 3, "combine": "greedy"},
        },
    ),
    Group("tiny: width 8, 1 epoch (SMS BN recalibration)", "sms-tiny", _TINY, ("barrier",)),
    Group(
        "tiny: width 8, 1 epoch, exact BN recalibration",
        "sms-tiny",
        merge(_TINY, {"bn": {"momentum": 0.0, "augment": False}}),
    ),
    Group(
        "tiny: width 8, 1 epoch, no BN recalibration",
        "sms-tiny",
        merge(_TINY, {"bn": {"recalibrate": "never"}}),
    ),
    Group(
        "tiny: width 8, 10 epochs",
        "sms-tiny",
        merge(_TINY, {"train": {"epochs": 10}}),
        ("barrier",),
    ),
)

MNIST1D = Setting(
    name="mnist1d",
    title="MNIST-1D, conv1d (width 32, 13,802 weights)",
    base={
        "data": {"dataset": "mnist1d"},
        "model": {"name": "conv1d", "options": {"width": 32}},
        "train": {"epochs": 10, "batch_size": 128, "lr": 0.1},
        "pruning": {"fraction": 0.4, "cycles": 6, "rewind_epochs": 1.0},
        "execution": {"device": "cpu"},
    },
    why=(
        "10 epochs of 56 steps reach a training loss near its floor for this width, so SWA "
        "averages 3 snapshots (epochs 8-10) of a converged run rather than of a run still "
        "descending, and ingredients fine-tuned from a trained parent start in one basin; "
        "keeping 60 % per cycle reaches 95.3 % sparsity in 6 cycles (the papers keep 80 %, "
        "which would need 14 cycles)."
    ),
    groups=(
        *_main_methods(
            {
                "IMP": ("hessian",),
                "SWAMP (N=4)": ("barrier", "hessian"),
                "2-ensemble of IMP": ("barrier",),
            }
        ),
        *_MNIST1D_EXPERIMENTS,
    ),
)

LENET = Setting(
    name="mnist-lenet",
    title="MNIST, LeNet-300-100 (266,200 weights)",
    base={
        "data": {"dataset": "mnist"},
        "model": {"name": "lenet300_100"},
        "train": {"epochs": 4, "batch_size": 128, "lr": 0.1, "augment": False},
        "pruning": {
            "scope": "layerwise",
            "fraction": 0.5,
            "layer_fractions": {"layers.5.weight": 0.25},
            "cycles": 5,
            "rewind_epochs": 0.5,
        },
        "execution": {"device": "cpu"},
    },
    why=(
        "4 epochs of 390 steps take LeNet-300-100 to about 98 % test accuracy with SGD, the "
        "plateau of this model (the lottery-ticket paper trains 50,000 steps with Adam for "
        "0.1-0.3 % more); layer-wise pruning with the output layer at half the rate follows "
        "that paper, at 50 % per cycle instead of 20 % to reach 96.8 % in 5 cycles on 2 CPU "
        "cores. What this budget cannot show: the last 25 % of 4 epochs is one epoch, so SWA "
        "takes a single snapshot and averages nothing; IMP+SWA and SWAMP's SWA part differ "
        "from IMP here only by their learning rate (annealed to swa_lr = 0.05 in 3 epochs, "
        "then constant for the last), and SWAMP's averaging is over its 4 particles alone. "
        "12 epochs (3 snapshots, as in MNIST-1D) would triple the setting's training time."
    ),
    groups=_main_methods({"IMP": ("hessian",), "SWAMP (N=4)": ("hessian",)}),
)

_MNIST1D_BASE = {
    "data": {"dataset": "mnist1d"},
    "model": {"name": "conv1d", "options": {"width": 32}},
    "train": {"epochs": 10, "batch_size": 128, "lr": 0.1},
    "execution": {"device": "cpu"},
}

#: pruning during training: each method at 95 % in one budget of 10 epochs (gmp's and dpf's
#: 2-epoch interval gives a dense phase and 4 pruning phases; bimp trains 6 dense epochs and
#: splits 4 over its 4 phases), its averaged variant, and the plain method given the
#: variant's compute (m x as long)
_DURING_GROUPS: dict[str, dict[str, Any]] = {
    "GMP": {"recipe": "gmp", "pruning": {"gmp_interval": 2}},
    "SMS-GMP (m=3)": {"recipe": "sms-gmp", "pruning": {"gmp_interval": 2, "cycles": 4}},
    "GMP, 3x as long": {"recipe": "gmp", "train": {"epochs": 30}, "pruning": {"gmp_interval": 6}},
    "DPF": {"recipe": "dpf", "pruning": {"gmp_interval": 2}},
    "SMS-DPF (m=3)": {"recipe": "sms-dpf", "pruning": {"gmp_interval": 2, "cycles": 4}},
    "SMS-DPF (m=3), masked settle": {
        "recipe": "sms-dpf",
        "pruning": {"gmp_interval": 2, "cycles": 4, "dpf_settle": "masked"},
    },
    "DPF, 3x as long": {"recipe": "dpf", "train": {"epochs": 30}, "pruning": {"gmp_interval": 6}},
    "DPF in phases (m=1)": {
        "recipe": "sms-dpf",
        "ingredients": {"count": 1},
        "pruning": {"gmp_interval": 2, "cycles": 4},
    },
    "BIMP": {
        "recipe": "bimp",
        "train": {"epochs": 6},
        "pruning": {"retrain_budget": 4, "cycles": 4},
    },
    "SMS-BIMP (m=3)": {
        "recipe": "sms-bimp",
        "train": {"epochs": 6},
        "pruning": {"retrain_budget": 4, "cycles": 4},
    },
    "BIMP, 3x retraining": {
        "recipe": "bimp",
        "train": {"epochs": 6},
        "pruning": {"retrain_budget": 12, "cycles": 4},
    },
    "RigL": {"recipe": "rigl"},
    "RigL, 4x as long": {"recipe": "rigl", "train": {"epochs": 40}},
    "SWAMP-RigL (N=4)": {"recipe": "swamp-rigl", "ingredients": {"count": 4}},
    "SWAMP-RigL (N=4), apart from the start": {
        "recipe": "swamp-rigl",
        "ingredients": {"count": 4},
        "pruning": {"rigl_together": 0.0},
    },
    "SWAMP-RigL (N=4), each decides": {
        "recipe": "swamp-rigl",
        "ingredients": {"count": 4},
        "pruning": {"rigl_decide": "each", "rigl_together": 0.0},
    },
    "RigL with SWA (SWAMP-RigL, N=1)": {"recipe": "swamp-rigl", "ingredients": {"count": 1}},
}

DURING = Setting(
    name="mnist1d-during",
    title="MNIST-1D, conv1d (width 32): pruning during training to 95 %",
    base={**_MNIST1D_BASE, "pruning": {"target_sparsity": 0.95}},
    why=(
        "every method reaches 95 % (the IMP settings' last sparsity) in one budget of 10 "
        "epochs of 57 steps at batch 128, lr 0.1: gmp and dpf prune every 2 epochs on the "
        "cubic schedule (a dense interval, then 4 steps), their SMS variants train 3 "
        "ingredients through each of those 4 phases and soup them (SMS-DPF on the mask of "
        "its copies' dense average, or, 'masked settle', of their masked average); bimp trains "
        "6 dense "
        "epochs and splits 4 over 4 ALLR phases; RigL trains 10 epochs from a random ERK "
        "mask, and SWAMP-RigL's 4 particles do so each (SWA over the last 25 %), in lock step "
        "sharing every drop/grow decision, on one batch order for the first half of training "
        "(or, 'apart from the start', each on its own order from the first step; 'each "
        "decides': each also on its own decisions, their masks settled at the end). Each "
        "averaged "
        "variant is compared with the plain method given its compute (3x, 4x as long), the "
        "baseline the SMS paper uses."
    ),
    groups=tuple(Group(k, "main", v) for k, v in _DURING_GROUPS.items()),
    paired=(
        ("SMS-GMP (m=3)", "GMP, 3x as long"),
        ("SMS-GMP (m=3)", "GMP"),
        ("SMS-DPF (m=3)", "DPF, 3x as long"),
        ("SMS-DPF (m=3)", "DPF"),
        ("SMS-DPF (m=3)", "SMS-DPF (m=3), masked settle"),
        ("SMS-DPF (m=3)", "DPF in phases (m=1)"),
        ("DPF in phases (m=1)", "DPF"),
        ("SMS-BIMP (m=3)", "BIMP, 3x retraining"),
        ("SMS-BIMP (m=3)", "BIMP"),
        ("SWAMP-RigL (N=4)", "RigL, 4x as long"),
        ("SWAMP-RigL (N=4)", "RigL"),
        ("SWAMP-RigL (N=4)", "RigL with SWA (SWAMP-RigL, N=1)"),
        ("SWAMP-RigL (N=4)", "SWAMP-RigL (N=4), apart from the start"),
        ("SWAMP-RigL (N=4), apart from the start", "SWAMP-RigL (N=4), each decides"),
        ("DPF", "GMP"),
        ("RigL", "GMP"),
    ),
    document="RESULTS-during-training.md",
    final_only=True,
)

CHANNELS = Setting(
    name="mnist1d-channel",
    title="MNIST-1D, conv1d (width 32): whole channels",
    base={
        **_MNIST1D_BASE,
        "pruning": {
            "granularity": "channel",
            "fraction": 0.3,
            "cycles": 4,
            "rewind_epochs": 1.0,
        },
    },
    why=(
        "the main MNIST-1D budget (10 epochs of 57 steps per model, rewinding to epoch 1), "
        "pruning 30 % of the alive channels (conv filters and the classifier's matching "
        "inputs, by L1 norm per weight, coupled layers together) per cycle for 4 cycles: 76 % "
        "of the channels gone (`export --slim` writes the model with only the rest). "
        "Random channels remove as many channels, drawn at random. The layer-wise groups "
        "remove 30 % of each layer's channels instead of ranking all layers together."
    ),
    groups=(
        Group("IMP", "main", {"recipe": "imp"}),
        Group("SWAMP (N=4)", "main", {"recipe": "swamp", "ingredients": {"count": 4}}),
        Group(
            "SMS uniform (m=3)",
            "main",
            {"recipe": "sms", "ingredients": {"count": 3, "combine": "uniform"}},
        ),
        Group("random channels", "main", {"recipe": "random"}),
        Group("IMP, layer-wise", "main", {"recipe": "imp", "pruning": {"scope": "layerwise"}}),
        Group(
            "SWAMP (N=4), layer-wise",
            "main",
            {"recipe": "swamp", "ingredients": {"count": 4}, "pruning": {"scope": "layerwise"}},
        ),
    ),
    paired=(
        ("SWAMP (N=4)", "IMP"),
        ("SMS uniform (m=3)", "IMP"),
        ("IMP", "random channels"),
        ("SWAMP (N=4), layer-wise", "IMP, layer-wise"),
        ("IMP, layer-wise", "IMP"),
    ),
    document="RESULTS-channels.md",
)

SETTINGS: dict[str, Setting] = {s.name: s for s in (MNIST1D, LENET, DURING, CHANNELS)}
