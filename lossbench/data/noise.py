"""Label-noise models: corrupt training labels reproducibly and report what was actually done.

Every model draws from its own generator (``default_rng([seed, 0x5EED])``, never the global RNG),
so a run's noisy labels depend only on (labels, kind, params, seed). ``apply_noise`` returns the
labels with a ``NoiseReport`` (realised rate, empirical transition matrix, hash of the labels):
a benchmark that claims "40% noise" should be able to show which 40%.

A model is registered in ``NOISE`` as ``fn(y, num_classes, rng, *, rate=..., **kind_params)``;
keyword parameters with defaults are the task's ``[noise]`` options, ``meta`` (the source's
extras) is context the engine supplies. Range problems raise ``ValueError`` (the registry turns
them into one-line ``UserError``s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lossbench.errors import UserError, require
from lossbench.registry import Registry

NOISE: Registry[np.ndarray] = Registry("noise model")

NOISE_SEED_SALT = 0x5EED
"""Second word of the noise generator's seed: keeps noise streams apart from model/split seeds."""

# --- Asymmetric flip maps ---------------------------------------------------------------------

MNIST_FLIPS: dict[int, int] = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
"""Patrini et al., CVPR 2017 ("Making deep neural networks robust to label noise: a loss
correction approach"): 2->7, 3->8, 5<->6, 7->1."""

CIFAR10_FLIPS: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
"""Patrini et al., CVPR 2017: truck->automobile, bird->airplane, deer->horse, cat<->dog."""

CIFAR100_FINE_BY_COARSE: dict[str, tuple[str, ...]] = {
    # The CIFAR site's superclass table (cs.toronto.edu/~kriz/cifar.html), in the names of the
    # dataset's meta file. Coarse ids are the alphabetical order of these 20 keys.
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

CIFAR100_COARSE_NAMES: tuple[str, ...] = tuple(sorted(CIFAR100_FINE_BY_COARSE))
"""Coarse label names by coarse id (the dataset's ids are alphabetical)."""

CIFAR100_FINE_NAMES: tuple[str, ...] = tuple(
    sorted(name for members in CIFAR100_FINE_BY_COARSE.values() for name in members)
)
"""Fine label names by fine id (the dataset's ids are alphabetical: apple=0 ... worm=99)."""

_FINE_ID = {name: i for i, name in enumerate(CIFAR100_FINE_NAMES)}

CIFAR100_SUPERCLASSES: tuple[tuple[int, ...], ...] = tuple(
    tuple(sorted(_FINE_ID[name] for name in CIFAR100_FINE_BY_COARSE[coarse]))
    for coarse in CIFAR100_COARSE_NAMES
)
"""Fine ids of each superclass, indexed by coarse id; e.g. aquatic_mammals = (4, 30, 55, 72, 95).
Not blocks of five consecutive ids: that shortcut mixes unrelated classes."""

CIFAR100_COARSE_OF: np.ndarray = np.empty(100, dtype=np.int64)
for _coarse, _members in enumerate(CIFAR100_SUPERCLASSES):
    CIFAR100_COARSE_OF[list(_members)] = _coarse

CIFAR100_FLIPS: dict[int, int] = {
    fine: members[(i + 1) % len(members)]
    for members in CIFAR100_SUPERCLASSES
    for i, fine in enumerate(members)
}
"""Each fine class flips to the next one (by id, circularly) within its real superclass."""

FASHION_MNIST_FLIPS: dict[int, int] = {9: 7, 7: 5, 2: 6, 4: 3, 3: 4}
"""Zhang & Sabuncu, NeurIPS 2018 (GCE), class-dependent noise on Fashion-MNIST: boot->sneaker,
sneaker->sandal, pullover->shirt, coat<->dress (labels: 2 pullover, 3 dress, 4 coat, 5 sandal,
6 shirt, 7 sneaker, 9 ankle boot)."""


def _swaps(*pairs: tuple[int, int]) -> dict[int, int]:
    """Pair swaps a<->b as a flip map."""
    return {k: v for a, b in pairs for k, v in ((a, b), (b, a))}


LETTER_PAIRS = _swaps((1, 3), (2, 6), (4, 5), (7, 13), (8, 11), (10, 23), (12, 22), (14, 16),
                      (15, 17), (20, 21))
"""LDR paper's class-dependent noise on Letter (``classDep_letter`` in its official
``utils.py``): B<->D, C<->G, E<->F, H<->N, I<->L, K<->X, M<->W, O<->Q, P<->R, U<->V; A, J, S, T,
Y, Z never flip."""

VOWEL_PAIRS = _swaps((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
"""LDR paper's class-dependent noise on Vowel (``classDep_vowel``): 0<->1, 2<->3, 4<->5, 6<->7,
8<->9; class 10 never flips."""

NEWS20_PAIRS = _swaps((2, 5), (3, 4), (7, 8), (9, 10), (11, 12), (15, 18))
"""LDR paper's class-dependent noise on News20 (``classDep_news20``)."""

ASYM_MAPS: dict[str, dict[int, int]] = {
    "mnist": MNIST_FLIPS,
    "cifar10": CIFAR10_FLIPS,
    "cifar100": CIFAR100_FLIPS,
    "fashion-mnist": FASHION_MNIST_FLIPS,
    "letter": LETTER_PAIRS,
    "vowel": VOWEL_PAIRS,
    "news20": NEWS20_PAIRS,
}
_MAP_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100, "fashion-mnist": 10, "letter": 26,
                "vowel": 11, "news20": 20}
LDR_MAPS = ("letter", "vowel", "news20")
"""The maps of the LDR paper's ``class-dependent`` model."""


# --- Report and entry point -------------------------------------------------------------------


@dataclass
class NoiseReport:
    """What the noise model did, stored with every run (plain types, JSON-ready)."""

    kind: str
    params: dict[str, Any]
    seed: int
    requested_rate: float
    realised_rate: float
    transition: list[list[float]]
    """K x K empirical P(noisy=j | clean=i); rows of classes absent from the labels are zero."""
    labels_hash: str
    """sha256[:16] of the noisy labels as little-endian int64 bytes."""


def noise_rng(seed: int) -> np.random.Generator:
    """The noise models' own generator: independent of the global and of model/split seeds."""
    return np.random.default_rng([int(seed), NOISE_SEED_SALT])


def labels_hash(y: np.ndarray) -> str:
    """Short stable fingerprint of a label array (dtype- and layout-independent)."""
    return hashlib.sha256(np.ascontiguousarray(y, dtype="<i8").tobytes()).hexdigest()[:16]


def transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Row-normalised empirical P(noisy=j | clean=i), float64 [K, K]."""
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (clean, noisy), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def check_noise(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Resolved parameters of a ``[noise]`` table, checked before any data is loaded.

    Raises ``UserError`` for an unknown kind or parameter, a bad value, or a rate outside
    [0, 1). What needs the data (the source's human labels, ``map=auto``) is checked later.
    """
    resolved = NOISE.get(kind).resolve(params)
    rate = float(resolved.get("rate", 0.0))
    require(0.0 <= rate < 1.0, f"noise {kind}: rate={rate} is outside [0, 1); e.g. noise.rate=0.4")
    return resolved


def apply_noise(
    y: np.ndarray,
    num_classes: int,
    kind: str,
    params: Mapping[str, Any],
    seed: int,
    meta: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, NoiseReport]:
    """Noisy copy of ``y`` (int64) and its report; ``y`` itself is never modified."""
    entry = NOISE.get(kind)
    resolved = check_noise(kind, params)
    rate = float(resolved.get("rate", 0.0))
    clean = np.asarray(y).astype(np.int64, copy=True)
    if clean.ndim != 1 or (clean.size and (clean.min() < 0 or clean.max() >= num_classes)):
        raise ValueError(f"labels must be a 1-D array in [0, {num_classes}), got {clean.shape}")
    meta = dict(meta or {})
    noisy = entry.build(resolved, y=clean.copy(), num_classes=num_classes,
                        rng=noise_rng(seed), meta=meta)
    noisy = np.asarray(noisy, dtype=np.int64)
    in_range = not noisy.size or (noisy.min() >= 0 and noisy.max() < num_classes)
    if noisy.shape != clean.shape or not in_range:
        raise ValueError(f"noise model '{kind}' returned invalid labels {noisy.shape}")
    realised = float(np.mean(noisy != clean)) if clean.size else 0.0
    report_params = dict(resolved)
    if kind == "human":
        report_params["human_key"] = str(meta.get("human_key", ""))
    report = NoiseReport(
        kind=kind,
        params=report_params,
        seed=int(seed),
        requested_rate=realised if kind == "human" else rate,  # human noise has its own rate
        realised_rate=realised,
        transition=np.round(transition_matrix(clean, noisy, num_classes), 6).tolist(),
        labels_hash=labels_hash(noisy),
    )
    return noisy, report


# --- Models -----------------------------------------------------------------------------------


def _flip_mask(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    return rng.random(n) < rate


@NOISE.register("none")
def no_noise(y: np.ndarray, num_classes: int, rng: np.random.Generator, *,
             rate: float = 0.0) -> np.ndarray:
    """Clean labels: the control every noisy result is compared against."""
    if rate != 0.0:
        raise ValueError(f"rate={rate} with no noise model; set noise.kind=symmetric (or asym, "
                         "pairflip) to corrupt labels, or drop noise.rate")
    return y


@NOISE.register("symmetric")
def symmetric(y: np.ndarray, num_classes: int, rng: np.random.Generator, *,
              rate: float = 0.0, include_true: bool = False) -> np.ndarray:
    """Uniform noise: with prob ``rate`` a label is replaced by a uniformly drawn OTHER class.

    ``include_true`` draws from all classes instead (the true one included), so the realised
    rate is ``rate * (K-1)/K``; papers differ on this, hence the switch.
    """
    if num_classes < 2:
        raise ValueError("symmetric noise needs at least 2 classes")
    flip = _flip_mask(rng, len(y), rate)
    m = int(flip.sum())
    if include_true:
        y[flip] = rng.integers(0, num_classes, size=m)
    else:
        y[flip] = (y[flip] + rng.integers(1, num_classes, size=m)) % num_classes
    return y


@NOISE.register("asym", auto_map="asym_map")
def asym(y: np.ndarray, num_classes: int, rng: np.random.Generator, *, meta: Mapping[str, Any],
         rate: float = 0.0,
         map_: Literal["auto", "mnist", "cifar10", "cifar100", "fashion-mnist", "letter",
                       "vowel", "news20"] = "auto") -> np.ndarray:
    """Class-dependent flips (Patrini et al., CVPR 2017): a source class flips to its target.

    Each example of a source class flips with prob ``rate``; flips are decided from the clean
    labels at once (a cat turned dog never turns back). ``map=auto`` takes the source's standard
    map: mnist (2->7, 3->8, 5<->6, 7->1), cifar10 (truck->automobile, bird->airplane,
    deer->horse, cat<->dog), cifar100 (next class within its superclass), fashion-mnist (GCE:
    boot->sneaker->sandal, pullover->shirt, coat<->dress); the LDR paper's pair swaps (letter,
    vowel, news20) can be named too.
    """
    return _flip_by_map(y, num_classes, rng, meta, rate,
                        str(meta.get("asym_map", "")) if map_ == "auto" else map_)


def _flip_by_map(y: np.ndarray, num_classes: int, rng: np.random.Generator,
                 meta: Mapping[str, Any], rate: float, name: str) -> np.ndarray:
    if name not in ASYM_MAPS:
        raise ValueError("this dataset has no standard flip map; set noise.map="
                         + "|".join(ASYM_MAPS))
    if num_classes != _MAP_CLASSES[name]:
        raise ValueError(f"map '{name}' is for {_MAP_CLASSES[name]} classes, "
                         f"this dataset has {num_classes}")
    if name == "cifar100" and "coarse_train" in meta:
        coarse = np.asarray(meta["coarse_train"])
        require(coarse.shape == y.shape and bool(np.all(CIFAR100_COARSE_OF[y] == coarse)),
                "asym cifar100: the source's coarse labels disagree with the CIFAR-100 "
                "superclass table; is data.source a CIFAR-100 with the standard label order?")
    target = np.arange(num_classes)
    for src, dst in ASYM_MAPS[name].items():
        target[src] = dst
    flip = _flip_mask(rng, len(y), rate) & (target[y] != y)
    return np.where(flip, target[y], y)


@NOISE.register("uniform")
def uniform(y: np.ndarray, num_classes: int, rng: np.random.Generator, *,
            rate: float = 0.0) -> np.ndarray:
    """The LDR paper's uniform noise (Zhu, Ying & Yang, ICML 2023; ``uniform_noise`` in its
    official ``utils.py``): with prob ``rate`` a label is redrawn uniformly from ALL K classes,
    the true one included, so the realised rate is ``rate * (K-1)/K`` (0.6 on Letter: 0.577).

    The same distribution as ``symmetric`` with ``include_true = true``; named so that a task
    states the paper's model. The report keeps the requested rate and the realised one.
    """
    return symmetric(y, num_classes, rng, rate=rate, include_true=True)


@NOISE.register("class-dependent", auto_map="pair_map")
def class_dependent(y: np.ndarray, num_classes: int, rng: np.random.Generator, *,
                    meta: Mapping[str, Any], rate: float = 0.0,
                    map_: Literal["auto", "letter", "vowel", "news20"] = "auto") -> np.ndarray:
    """The LDR paper's class-dependent noise (``classDep_letter`` / ``classDep_vowel`` /
    ``classDep_news20`` in its official ``utils.py``): with prob ``rate`` a label is swapped
    with its partner class. Letter: B<->D, C<->G, E<->F, H<->N, I<->L, K<->X, M<->W, O<->Q,
    P<->R, U<->V; Vowel: 0<->1, 2<->3, 4<->5, 6<->7, 8<->9. Classes without a partner never
    change, so the realised rate is ``rate`` times their complement's share (20/26 of Letter's
    classes, 10/11 of Vowel's). ``map=auto`` takes the source's ``pair_map``.
    """
    name = str(meta.get("pair_map", "")) if map_ == "auto" else map_
    if name not in LDR_MAPS:
        raise ValueError("this dataset has no LDR pair map; set noise.map=" + "|".join(LDR_MAPS))
    return _flip_by_map(y, num_classes, rng, meta, rate, name)


@NOISE.register("pairflip")
def pairflip(y: np.ndarray, num_classes: int, rng: np.random.Generator, *,
             rate: float = 0.0) -> np.ndarray:
    """Pair flipping (Han et al., NeurIPS 2018, Co-teaching): y -> (y+1) mod K with prob rate."""
    flip = _flip_mask(rng, len(y), rate)
    return np.where(flip, (y + 1) % num_classes, y)


@NOISE.register("human")
def human(y: np.ndarray, num_classes: int, rng: np.random.Generator, *,
          meta: Mapping[str, Any], rate: float = 0.0) -> np.ndarray:
    """Real human label noise (CIFAR-N, Wei et al., ICLR 2022), as loaded by the source.

    The source puts the chosen annotation (``data.human_key``) in ``meta["human_labels"]``; its
    noise rate is the annotators', so ``rate`` must stay 0.
    """
    if rate != 0.0:
        raise ValueError(f"rate={rate}, but human noise has its own rate; drop noise.rate")
    labels = meta.get("human_labels")
    if labels is None:
        raise UserError("noise kind 'human' needs human labels from the source; pass "
                        "--set data.human_labels=/path/CIFAR-10_human.pt (or CIFAR-100_human.pt, "
                        "from github.com/UCSC-REAL/cifar-10-100n)")
    labels = np.asarray(labels, dtype=np.int64)
    require(labels.shape == y.shape,
            f"human labels have {labels.shape[0] if labels.ndim else 0} entries for "
            f"{len(y)} training labels; the label file must match the training set")
    return labels.copy()
