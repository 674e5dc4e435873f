"""Deep-metric-learning image sets with their standard class-disjoint splits: CUB-200-2011,
Cars196 and Stanford Online Products (SOP).

Protocol (Musgrave et al., A Metric Learning Reality Check, ECCV 2020, and the papers before it):
train on one set of classes, retrieve among the others. CUB: classes 1-100 train, 101-200 test;
Cars196: 1-98 / 99-196 (the ``test`` flag of ``cars_annos.mat`` is ignored); SOP: the classes of
``Ebay_train.txt`` (11,318) / ``Ebay_test.txt`` (11,316).

Where the images come from, in order: ``data.dir`` (the dataset's native layout, the folder
itself or its parent), ``$LOSSBENCH_DATA/<source>``, ``../shared/data/<source>`` and
``../shared/data`` itself (``lossbench.data.locate``; source cub200, cars196 or sop), then
a Hugging Face dataset named by ``data.hf_id`` (any dataset with an image column and an integer
class column; all its splits are pooled and the classes split by sorted id as above). Images are
decoded with PIL, resized (shorter side) and centre-cropped to ``image_size`` squared, RGB.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.data import locate
from lossbench.data.sources import SOURCES, RawSplits
from lossbench.errors import UserError, require

Listing = tuple[list[Path], np.ndarray, np.ndarray]
"""(image paths, original class ids, is-training-class flags)."""


@dataclass(frozen=True)
class DmlSet:
    """What differs between the three sets: names, native layout reader, split rule for HF."""

    title: str
    folder: str
    markers: tuple[str, ...]
    layout: str
    url: str
    read: Callable[[Path], Listing]
    train_share: float
    """Fraction of the sorted class ids that are training classes (HF path)."""
    key: str
    """The source's name, also the folder ``lossbench.data.locate`` looks for."""


# --- Native layouts -----------------------------------------------------------------------------


def _rows(path: Path) -> list[list[str]]:
    """Whitespace-split non-empty lines of a text index file."""
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def _first_half(labels: np.ndarray) -> np.ndarray:
    """True for the first half of the sorted class ids (CUB 1-100 of 200, Cars 1-98 of 196)."""
    classes = np.unique(labels)
    return np.isin(labels, classes[: len(classes) // 2])


def _read_cub(root: Path) -> Listing:
    """``images.txt`` (id, relative path), ``image_class_labels.txt`` (id, class), ``images/``."""
    paths = {r[0]: r[1] for r in _rows(root / "images.txt")}
    classes = {r[0]: int(r[1]) for r in _rows(root / "image_class_labels.txt")}
    missing = sorted(set(paths) - set(classes))
    require(not missing, f"{root / 'image_class_labels.txt'} has no class for image id "
            f"{missing[:1]}; expected the file as published with CUB-200-2011")
    ids = sorted(paths, key=int)
    labels = np.array([classes[i] for i in ids], dtype=np.int64)
    return [root / "images" / paths[i] for i in ids], labels, _first_half(labels)


def _mat_field(record: Any, name: str) -> Any:
    value = record[name]
    while isinstance(value, np.ndarray) and value.size == 1:
        value = value.item() if value.dtype != object else value.reshape(-1)[0]
    return value


def _read_cars(root: Path) -> Listing:
    """``cars_annos.mat``: struct array ``annotations`` with ``relative_im_path`` and ``class``."""
    from scipy.io import loadmat

    path = root / "cars_annos.mat"
    try:
        annotations = loadmat(str(path))["annotations"].reshape(-1)
        rel = [str(_mat_field(a, "relative_im_path")) for a in annotations]
        labels = np.array([int(_mat_field(a, "class")) for a in annotations], dtype=np.int64)
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise UserError(f"cannot read {path} ({type(err).__name__}: {err}); expected the "
                        "cars_annos.mat published with Cars196") from None
    return [root / r for r in rel], labels, _first_half(labels)


def _read_sop(root: Path) -> Listing:
    """``Ebay_train.txt``, ``Ebay_test.txt``: a header, then image_id class_id super_id path."""
    paths: list[Path] = []
    labels: list[int] = []
    train: list[bool] = []
    for name, is_train in (("Ebay_train.txt", True), ("Ebay_test.txt", False)):
        rows = _rows(root / name)
        require(len(rows) > 1 and len(rows[0]) == 4 and not rows[0][1].isdigit(),
                f"{root / name}: expected a header line and 'image_id class_id super_class_id "
                "path' rows")
        for row in rows[1:]:
            paths.append(root / row[3])
            labels.append(int(row[1]))
            train.append(is_train)
    y = np.array(labels, dtype=np.int64)
    flags = np.array(train)
    require(not np.isin(y[flags], y[~flags]).any(),
            f"{root}: Ebay_train.txt and Ebay_test.txt share classes; expected disjoint classes")
    return paths, y, flags


CUB = DmlSet(
    "CUB-200-2011", "CUB_200_2011", ("images.txt", "image_class_labels.txt"),
    "CUB_200_2011/{images.txt, image_class_labels.txt, images/}",
    "https://www.vision.caltech.edu/datasets/cub_200_2011/", _read_cub, 0.5, "cub200",
)
CARS = DmlSet(
    "Cars196", "cars196", ("cars_annos.mat",), "a folder with cars_annos.mat and car_ims/",
    "https://ai.stanford.edu/~jkrause/cars/car_dataset.html", _read_cars, 0.5, "cars196",
)
SOP = DmlSet(
    "Stanford Online Products", "Stanford_Online_Products", ("Ebay_train.txt", "Ebay_test.txt"),
    "Stanford_Online_Products/{Ebay_train.txt, Ebay_test.txt, <category>_final/}",
    "https://cvgl.stanford.edu/projects/lifted_struct/", _read_sop, 11318 / 22634, "sop",
)


def _native_folder(root: Path, spec: DmlSet) -> Path | None:
    for cand in (root, root / spec.folder):
        if all((cand / m).is_file() for m in spec.markers):
            return cand
    return None


# --- Images -------------------------------------------------------------------------------------


def _fit(image: Any, size: int) -> np.ndarray:
    """RGB, shorter side to ``size``, centre crop: uint8 [3, size, size]."""
    from PIL import Image, ImageOps

    fitted = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    return np.asarray(fitted, dtype=np.uint8).transpose(2, 0, 1)


def _decode_file(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return _fit(image, size)
    except FileNotFoundError:
        raise UserError(f"image {path} listed in the index is missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"cannot decode image {path}: {err}") from None


def _decode_all(items: Sequence[Any], size: int, decode: Callable[[Any, int], np.ndarray]
                ) -> np.ndarray:
    """Decode in a thread pool (PIL releases the GIL while decoding); uint8 [N, 3, S, S]."""
    if not items:
        return np.zeros((0, 3, size, size), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(lambda item: decode(item, size), items)))


def _splits(images: np.ndarray, labels: np.ndarray, train: np.ndarray, origin: str) -> RawSplits:
    """Class-disjoint RawSplits: train labels renumbered 0..C-1, test labels 0..C_test-1."""
    require(train.any() and (~train).any(), f"{origin}: need both training and test classes")
    y_train = np.unique(labels[train], return_inverse=True)[1].astype(np.int64)
    y_test = np.unique(labels[~train], return_inverse=True)[1].astype(np.int64)
    meta = {"class_disjoint": True, "origin": origin,
            "test_classes": int(y_test.max()) + 1}
    return RawSplits(images[train], y_train, images[~train], y_test, int(y_train.max()) + 1,
                     "image", meta)


def _load_native(folder: Path, spec: DmlSet, size: int) -> RawSplits:
    paths, labels, train = spec.read(folder)
    require(len(paths) > 0, f"{folder}: the index lists no images")
    return _splits(_decode_all(paths, size, _decode_file), labels, train, f"dir:{folder}")


# --- Hugging Face -------------------------------------------------------------------------------

_LABEL_COLUMNS = ("label", "class_id", "class", "labels", "fine_label")


def _load_hf(spec: DmlSet, hf_id: str, cache_dir: str, size: int) -> RawSplits:
    import datasets

    try:
        dsd = datasets.load_dataset(hf_id, cache_dir=cache_dir or None)
    except OSError as err:  # ConnectionError (offline, no cache), DatasetNotFoundError, ...
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise UserError(f"{spec.title}: Hugging Face dataset '{hf_id}' is not available "
                        f"({reason}); pass --set data.dir=<{spec.layout}>") from None
    parts = list(dsd.values())
    columns = parts[0].features
    image_cols = [c for c, f in columns.items() if isinstance(f, datasets.Image)]
    label_cols = [c for c in _LABEL_COLUMNS if c in columns]
    require(bool(image_cols) and bool(label_cols),
            f"Hugging Face dataset '{hf_id}' needs an image column and one of "
            f"{', '.join(_LABEL_COLUMNS)}; it has {', '.join(columns)}")
    images, labels = [], []
    for part in parts:
        images.append(_decode_all(part[image_cols[0]], size, _fit))
        labels.append(np.asarray(part[label_cols[0]], dtype=np.int64))
    y = np.concatenate(labels)
    classes = np.unique(y)
    train = np.isin(y, classes[: round(spec.train_share * len(classes))])
    return _splits(np.concatenate(images), y, train, f"hf:{hf_id}")


# --- Sources ------------------------------------------------------------------------------------


def load_dml(spec: DmlSet, dir_: str, image_size: int, hf_id: str, cache_dir: str) -> RawSplits:
    """``data.dir``, else the shared data folder, else ``data.hf_id``; else a UserError."""
    require(image_size >= 8, f"data.image_size must be >= 8, got {image_size}")
    if dir_:
        folder = _native_folder(Path(dir_).expanduser(), spec)
        require(folder is not None, f"{dir_} does not hold {spec.title} in its native layout "
                f"({spec.layout}); get it from {spec.url}")
        return _load_native(folder, spec, image_size)
    for root in (*locate.search_roots(spec.key), locate.SHARED_DATA):
        found = _native_folder(root, spec)
        if found is not None:
            return _load_native(found, spec, image_size)
    require(bool(hf_id), f"{spec.title} not found: pass --set data.dir=<{spec.layout}> "
            f"(from {spec.url}) or --set data.hf_id=<a Hugging Face dataset with image and "
            "label columns>")
    return _load_hf(spec, hf_id, cache_dir, image_size)


@SOURCES.register("cub200")
def cub200(dir: str = "", image_size: int = 64, hf_id: str = "", cache_dir: str = ""
           ) -> RawSplits:
    """CUB-200-2011 (11,788 bird images, 200 species): classes 1-100 train, 101-200 test."""
    return load_dml(CUB, dir, image_size, hf_id, cache_dir)


@SOURCES.register("cars196")
def cars196(dir: str = "", image_size: int = 64, hf_id: str = "", cache_dir: str = ""
            ) -> RawSplits:
    """Cars196 (16,185 car images, 196 models): classes 1-98 train, 99-196 test."""
    return load_dml(CARS, dir, image_size, hf_id, cache_dir)


@SOURCES.register("sop")
def sop(dir: str = "", image_size: int = 64, hf_id: str = "", cache_dir: str = "") -> RawSplits:
    """Stanford Online Products (120,053 images, 22,634 products): Ebay_train / Ebay_test."""
    return load_dml(SOP, dir, image_size, hf_id, cache_dir)
