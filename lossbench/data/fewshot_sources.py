"""Few-shot class splits (base / validation / novel classes) and the Omniglot and mini-ImageNet
sources.

A few-shot task names its split rule in ``split.scheme`` (``CLASS_SPLITS``):

* ``explicit``: the class ids in ``split.base``, ``split.val``, ``split.novel`` (digits-fewshot).
* ``cifar-fs``: CIFAR-100 by fine class, 64 / 16 / 20 (Bertinetto, Henriques, Torr, Vedaldi,
  Meta-learning with differentiable closed-form solvers, ICLR 2019). The lists below match the
  published split files (as shipped by torchmeta's ``cifar-fs/{val,test}.json`` and the r2d2
  split used by other repositories).
* ``fc100``: CIFAR-100 by superclass, 12 / 4 / 4 superclasses = 60 / 20 / 20 classes (Oreshkin,
  Rodriguez, Lacoste, TADAM, NeurIPS 2018; coarse ids {1,2,3,4,5,6,9,10,15,17,18,19} /
  {8,11,13,16} / {0,7,12,14} in the official ``create_dataset_cifar100``).
* ``source``: the source's own split, ``meta["fewshot_classes"]`` (Omniglot, mini-ImageNet).

For CIFAR the ``cifar100`` source is reused; its train and test images are pooled and re-split
by class. The sources here put every image in ``x_train`` / ``y_train`` (global class ids,
``x_test`` empty) and their split in ``meta["fewshot_classes"] = {"base", "val", "novel"}``:

* ``omniglot`` (Lake, Salakhutdinov, Tenenbaum, Science 2015): ``images_background`` alphabets are
  base classes except ``val_alphabets`` of them (drawn by ``split_seed``), held out for validation;
  ``images_evaluation`` alphabets are novel. A class is one character of one alphabet. No
  rotation-augmented classes.
* ``mini-imagenet`` (Vinyals et al., NeurIPS 2016; the split of Ravi & Larochelle, ICLR 2017,
  64 / 16 / 20 classes): a native folder, or a Hugging Face dataset of the 100 classes (any split
  layout, re-split by WordNet id with the lists below).

Where images come from, in order: ``data.dir`` (native layout, the folder itself or its parent),
``$LOSSBENCH_DATA/<name>``, ``../shared/data/<name>`` and ``../shared/data`` itself
(``lossbench.data.locate``; name ``omniglot`` / ``mini-imagenet``), then Hugging Face
(mini-ImageNet only). Offline with none: a one-line ``UserError`` saying how to supply the data.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.data import locate
from lossbench.data.hub import HubUnavailable, load_hf_dataset
from lossbench.data.noise import CIFAR100_COARSE_NAMES, CIFAR100_COARSE_OF, CIFAR100_FINE_NAMES
from lossbench.data.sources import SOURCES, RawSplits
from lossbench.errors import UserError, require
from lossbench.registry import Registry

# --- Published splits -------------------------------------------------------------------------

CIFAR_FS_VAL = (
    "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea",
    "camel", "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
)
CIFAR_FS_TEST = (
    "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard",
    "plain", "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle",
    "pickup_truck", "rocket",
)
"""CIFAR-FS validation (16) and test (20) classes; the other 64 are the training classes."""

FC100_VAL = ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
             "small_mammals")
FC100_TEST = ("aquatic_mammals", "insects", "medium_mammals", "people")
"""FC100 validation and test superclasses; the other 12 superclasses are the training ones."""

MINI_IMAGENET_VAL = (
    "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826", "n02971356",
    "n02981792", "n03075370", "n03417042", "n03535780", "n03584254", "n03770439", "n03773504",
    "n03980874", "n09256479",
)
MINI_IMAGENET_TEST = (
    "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738", "n02129165",
    "n02219486", "n02443484", "n02871525", "n03127925", "n03146219", "n03272010", "n03544143",
    "n03775546", "n04146614", "n04149813", "n04418357", "n04522168", "n07613480",
)
"""Ravi & Larochelle's mini-ImageNet validation (16) and test (20) WordNet ids; the other 64 of
the 100 classes are the training classes."""

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot (python/images_*.zip)"
MINI_IMAGENET_URL = "https://github.com/twitter/meta-learning-lstm (split csv files)"

# --- Class splits ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitConfig:
    """``[split]`` of a few-shot task: the rule and, for ``explicit``, the class id lists."""

    scheme: str = "explicit"
    base: tuple[int, ...] = ()
    val: tuple[int, ...] = ()
    novel: tuple[int, ...] = ()


@dataclass(frozen=True)
class ClassSplit:
    """Class ids of the three disjoint groups."""

    base: np.ndarray
    val: np.ndarray
    novel: np.ndarray

    def check(self, present: np.ndarray, source: str) -> None:
        """Every group non-empty, pairwise disjoint, and made of classes the data holds."""
        groups = {"base": self.base, "val": self.val, "novel": self.novel}
        for name, ids in groups.items():
            require(len(ids) > 0, f"the {name} classes of source '{source}' are empty")
            absent = sorted(set(ids.tolist()) - set(present.tolist()))
            require(not absent, f"{name} classes {absent[:5]} are not classes of source "
                    f"'{source}' (it has {len(present)} classes)")
        for a, b in (("base", "val"), ("base", "novel"), ("val", "novel")):
            shared = sorted(set(groups[a].tolist()) & set(groups[b].tolist()))
            require(not shared, f"split: {a} and {b} classes overlap at {shared[:5]}")


CLASS_SPLITS: Registry[ClassSplit] = Registry("class split scheme")
"""``split.scheme`` -> rule(raw, split): the three class groups of the source's classes."""


def _ids(values: Sequence[int]) -> np.ndarray:
    return np.asarray(sorted(values), dtype=np.int64)


def _fine_ids(names: Sequence[str]) -> np.ndarray:
    return _ids([CIFAR100_FINE_NAMES.index(n) for n in names])


def _require_cifar100(raw: RawSplits, scheme: str) -> None:
    require(raw.num_classes == 100, f"split.scheme='{scheme}' splits CIFAR-100; the source has "
            f"{raw.num_classes} classes (use data.source = \"cifar100\")")


@CLASS_SPLITS.register("explicit")
def explicit_split(raw: RawSplits, split: SplitConfig) -> ClassSplit:
    """The class ids listed in ``split.base``, ``split.val``, ``split.novel``."""
    return ClassSplit(_ids(split.base), _ids(split.val), _ids(split.novel))


@CLASS_SPLITS.register("cifar-fs")
def cifar_fs_split(raw: RawSplits, split: SplitConfig) -> ClassSplit:
    """CIFAR-FS: 64 / 16 / 20 CIFAR-100 classes (Bertinetto et al., ICLR 2019)."""
    _require_cifar100(raw, "cifar-fs")
    val, novel = _fine_ids(CIFAR_FS_VAL), _fine_ids(CIFAR_FS_TEST)
    return ClassSplit(np.setdiff1d(np.arange(100), np.concatenate([val, novel])), val, novel)


@CLASS_SPLITS.register("fc100")
def fc100_split(raw: RawSplits, split: SplitConfig) -> ClassSplit:
    """FC100: CIFAR-100 by superclass, 12 / 4 / 4 superclasses (Oreshkin et al., NeurIPS 2018)."""
    _require_cifar100(raw, "fc100")

    def fine_of(coarse_names: Sequence[str]) -> np.ndarray:
        coarse = [CIFAR100_COARSE_NAMES.index(n) for n in coarse_names]
        return np.flatnonzero(np.isin(CIFAR100_COARSE_OF, coarse))

    val, novel = fine_of(FC100_VAL), fine_of(FC100_TEST)
    return ClassSplit(np.setdiff1d(np.arange(100), np.concatenate([val, novel])), val, novel)


@CLASS_SPLITS.register("source")
def source_split(raw: RawSplits, split: SplitConfig) -> ClassSplit:
    """The source's own class split (``meta["fewshot_classes"]``): Omniglot, mini-ImageNet."""
    groups = raw.meta.get("fewshot_classes")
    require(groups is not None, "split.scheme='source' needs a source with its own few-shot "
            "class split (omniglot, mini-imagenet); use explicit, cifar-fs or fc100")
    return ClassSplit(*(_ids(groups[k]) for k in ("base", "val", "novel")))


# --- Images -----------------------------------------------------------------------------------


def _fit(image: Any, size: int, mode: str) -> np.ndarray:
    """A PIL image -> uint8 [C, size, size] (``mode`` L: 1 channel, RGB: 3), shorter side to
    ``size`` and centre-cropped."""
    from PIL import Image, ImageOps

    fitted = ImageOps.fit(image.convert(mode), (size, size), Image.Resampling.BILINEAR)
    array = np.asarray(fitted, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _decode(path: Path, size: int, mode: str) -> np.ndarray:
    """One image file -> uint8 [C, size, size]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return _fit(image, size, mode)
    except FileNotFoundError:
        raise UserError(f"image {path} listed in the split is missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"cannot decode image {path}: {err}") from None


def _decode_all(paths: Sequence[Path], size: int, mode: str) -> np.ndarray:
    """Decode in a thread pool (PIL releases the GIL while decoding)."""
    channels = 1 if mode == "L" else 3
    if not paths:
        return np.zeros((0, channels, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(lambda p: _decode(p, size, mode), paths)))


def _fewshot_raw(images: np.ndarray, names: Sequence[str], groups: dict[str, Sequence[str]],
                 origin: str) -> RawSplits:
    """RawSplits holding every image (class ids = sorted class names) and the class split."""
    classes = sorted(set(names))
    require(len(classes) > 0, f"{origin}: no images found")
    index = {name: i for i, name in enumerate(classes)}
    labels = np.array([index[n] for n in names], dtype=np.int64)
    split = {k: np.array(sorted(index[n] for n in set(v)), dtype=np.int64)
             for k, v in groups.items()}
    empty = np.zeros((0, *images.shape[1:]), dtype=np.uint8)
    meta: dict[str, Any] = {"fewshot_classes": split, "class_names": classes, "origin": origin}
    return RawSplits(images, labels, empty, np.zeros(0, dtype=np.int64), len(classes), "image",
                     meta)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def _first_folder(root: Path, subdirs: Sequence[str], found: Callable[[Path], bool]
                  ) -> Path | None:
    """``root`` or one of ``root/<subdir>`` for which ``found`` holds, else None."""
    if not root.is_dir():
        return None
    for cand in (root, *(root / s for s in subdirs)):
        if found(cand):
            return cand
    return None


def _first_found(name: str, subdirs: Sequence[str], found: Callable[[Path], bool]
                 ) -> Path | None:
    """``_first_folder`` over ``lossbench.data.locate``'s roots for ``name`` (``$LOSSBENCH_DATA/
    <name>``, ``../shared/data/<name>``), then ``../shared/data`` itself."""
    for root in (*locate.search_roots(name), locate.SHARED_DATA):
        folder = _first_folder(root, subdirs, found)
        if folder is not None:
            return folder
    return None


# --- Omniglot ---------------------------------------------------------------------------------

_OMNIGLOT_SETS = ("images_background", "images_evaluation")


def _is_omniglot(folder: Path) -> bool:
    return all((folder / s).is_dir() for s in _OMNIGLOT_SETS)


def _load_omniglot(folder: Path, size: int, val_alphabets: int, split_seed: int) -> RawSplits:
    paths: list[Path] = []
    names: list[str] = []
    alphabets: dict[str, list[str]] = {}
    for part in _OMNIGLOT_SETS:
        alphabets[part] = sorted(a.name for a in (folder / part).iterdir() if a.is_dir())
        for alphabet in alphabets[part]:
            for char in sorted(c for c in (folder / part / alphabet).iterdir() if c.is_dir()):
                files = _image_files(char)
                paths += files
                names += [f"{alphabet}/{char.name}"] * len(files)
    background = alphabets["images_background"]
    require(len(background) > val_alphabets, f"{folder}: {len(background)} background alphabets "
            f"cannot spare data.val_alphabets={val_alphabets} for validation")
    held = set(np.random.default_rng(split_seed).permutation(background)[:val_alphabets])

    def chars(keep: Callable[[str], bool]) -> list[str]:
        return [n for n in set(names) if keep(n.split("/")[0])]

    evaluation = set(alphabets["images_evaluation"])
    groups = {
        "base": chars(lambda a: a in background and a not in held),
        "val": chars(lambda a: a in held),
        "novel": chars(lambda a: a in evaluation),
    }
    raw = _fewshot_raw(_decode_all(paths, size, "L"), names, groups, f"dir:{folder}")
    raw.meta["val_alphabets"] = sorted(held)
    return raw


@SOURCES.register("omniglot")
def omniglot(dir: str = "", image_size: int = 28, val_alphabets: int = 5, split_seed: int = 0
             ) -> RawSplits:
    """Omniglot (1,623 characters of 50 alphabets, 20 drawings each), grayscale.

    ``dir``: the folder holding ``images_background/`` and ``images_evaluation/`` (unzipped from
    the official repository), or its parent; else ``../shared/data``. Background alphabets are
    base classes but ``val_alphabets`` (drawn by ``split_seed``), evaluation alphabets novel.
    """
    require(image_size >= 8, f"data.image_size must be >= 8, got {image_size}")
    require(val_alphabets >= 1, f"data.val_alphabets must be >= 1, got {val_alphabets}")
    subdirs = ("python", "omniglot", "omniglot/python", "omniglot-master/python")
    folder = (_first_folder(Path(dir).expanduser(), subdirs, _is_omniglot) if dir
              else _first_found("omniglot", subdirs, _is_omniglot))
    if folder is None and dir:
        raise UserError(f"data.dir={dir} holds no images_background/ and images_evaluation/ "
                        f"folders; unzip them from {OMNIGLOT_URL}")
    if folder is None:
        raise UserError("Omniglot not found: pass --set data.dir=<folder with "
                        f"images_background/ and images_evaluation/> (unzipped from "
                        f"{OMNIGLOT_URL})")
    return _load_omniglot(folder, image_size, val_alphabets, split_seed)


# --- mini-ImageNet ----------------------------------------------------------------------------

_MINI_PARTS = {"base": "train", "val": "val", "novel": "test"}


def _is_mini_csv(folder: Path) -> bool:
    return (folder / "images").is_dir() and all(
        (folder / f"{p}.csv").is_file() for p in _MINI_PARTS.values())


def _is_mini_folders(folder: Path) -> bool:
    return all((folder / p).is_dir() for p in _MINI_PARTS.values())


def _is_mini(folder: Path) -> bool:
    return _is_mini_csv(folder) or _is_mini_folders(folder)


def _read_mini_csv(folder: Path) -> tuple[list[Path], list[str], dict[str, list[str]]]:
    """``{train,val,test}.csv`` (``filename,label``), images in ``images/`` (flat or by label)."""
    paths: list[Path] = []
    names: list[str] = []
    groups: dict[str, list[str]] = {}
    for group, part in _MINI_PARTS.items():
        with (folder / f"{part}.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        require(len(rows) > 0 and {"filename", "label"} <= set(rows[0]),
                f"{folder / part}.csv: expected a 'filename,label' header and rows")
        for row in rows:
            flat = folder / "images" / row["filename"]
            paths.append(flat if flat.exists() else folder / "images" / row["label"] / flat.name)
            names.append(row["label"])
        groups[group] = sorted({r["label"] for r in rows})
    return paths, names, groups


def _read_mini_folders(folder: Path) -> tuple[list[Path], list[str], dict[str, list[str]]]:
    """``{train,val,test}/<wnid>/<image>``."""
    paths: list[Path] = []
    names: list[str] = []
    groups: dict[str, list[str]] = {}
    for group, part in _MINI_PARTS.items():
        classes = sorted(c for c in (folder / part).iterdir() if c.is_dir())
        for cls in classes:
            files = _image_files(cls)
            paths += files
            names += [cls.name] * len(files)
        groups[group] = [c.name for c in classes]
    return paths, names, groups


def _load_mini_native(folder: Path, size: int) -> RawSplits:
    read = _read_mini_csv if _is_mini_csv(folder) else _read_mini_folders
    paths, names, groups = read(folder)
    shared = set(groups["base"]) & (set(groups["val"]) | set(groups["novel"]))
    shared |= set(groups["val"]) & set(groups["novel"])
    require(not shared, f"{folder}: train/val/test share classes ({sorted(shared)[:3]}); expected "
            "the class-disjoint split of Ravi & Larochelle")
    return _fewshot_raw(_decode_all(paths, size, "RGB"), names, groups, f"dir:{folder}")


def _load_mini_hf(hf_id: str, cache_dir: str, size: int) -> RawSplits:
    """Every split of a Hugging Face dataset of the mini-ImageNet classes, re-split by WordNet id
    (the label column's class names) with Ravi & Larochelle's lists."""
    import datasets

    try:
        dsd = load_hf_dataset(hf_id, cache_dir)
    except HubUnavailable as reason:
        raise UserError(
            "mini-ImageNet not found: pass --set data.dir=<folder with train.csv, val.csv, "
            f"test.csv and images/, or train/ val/ test/ class folders> ({MINI_IMAGENET_URL}) "
            f"or make Hugging Face dataset '{hf_id}' available in the HF cache (set "
            f"data.cache_dir / HF_HOME; {reason})") from None
    parts = list(dsd.values())
    features = parts[0].features
    image_cols = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    label_cols = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    require(bool(image_cols) and bool(label_cols), f"Hugging Face dataset '{hf_id}' needs an "
            f"image column and a class-label column; it has {', '.join(features)}")
    wnids = features[label_cols[0]].names
    images, names = [], []
    for part in parts:
        images += [_fit(im, size, "RGB") for im in part[image_cols[0]]]
        names += [wnids[i] for i in part[label_cols[0]]]
    present = set(names)
    val, novel = present & set(MINI_IMAGENET_VAL), present & set(MINI_IMAGENET_TEST)
    require(bool(val) and bool(novel), f"Hugging Face dataset '{hf_id}': its class names are not "
            "the mini-ImageNet WordNet ids (no validation or test class of Ravi & Larochelle)")
    groups = {"base": sorted(present - val - novel), "val": sorted(val), "novel": sorted(novel)}
    stacked = np.stack(images) if images else np.zeros((0, 3, size, size), dtype=np.uint8)
    return _fewshot_raw(stacked, names, groups, f"hf:{hf_id}")


@SOURCES.register("mini-imagenet")
def mini_imagenet(dir: str = "", image_size: int = 84, hf_id: str = "timm/mini-imagenet",
                  cache_dir: str = "") -> RawSplits:
    """mini-ImageNet (100 ImageNet classes x 600 images), Ravi & Larochelle's 64 / 16 / 20 split.

    ``dir``: ``train.csv``, ``val.csv``, ``test.csv`` with ``images/``, or ``train/``, ``val/``,
    ``test/`` class folders (the folder or its parent ``mini-imagenet/``); else
    ``../shared/data``; else Hugging Face ``hf_id`` (all its splits pooled and re-split by class).
    """
    require(image_size >= 8, f"data.image_size must be >= 8, got {image_size}")
    subdirs = ("mini-imagenet", "miniimagenet", "miniImageNet")
    if dir:
        folder = _first_folder(Path(dir).expanduser(), subdirs, _is_mini)
        require(folder is not None, f"data.dir={dir} holds neither train.csv/val.csv/test.csv "
                f"with images/ nor train/ val/ test/ class folders ({MINI_IMAGENET_URL})")
    else:
        folder = _first_found("mini-imagenet", subdirs, _is_mini)
    if folder is not None:
        return _load_mini_native(folder, image_size)
    return _load_mini_hf(hf_id, cache_dir, image_size)
