"""CIFAR-10 / CIFAR-100 sources, with CIFAR-N human labels (Wei et al., ICLR 2022) as data.

Where the images come from, in order: ``data.dir`` (the python version from the CIFAR site:
``cifar-10-batches-py`` / ``cifar-100-python``, the folder itself or its parent), then
``$LOSSBENCH_DATA/cifar10`` (``cifar100``) and ``../shared/data/cifar10``
(``lossbench.data.locate``; also ``../shared/data`` itself), then the Hugging Face dataset
(``uoft-cs/cifar10`` / ``uoft-cs/cifar100``, from the local HF cache when offline).

Human labels (``data.human_labels``, the published ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt``)
are checked against the loaded training labels and put in ``meta["human_labels"]``; the
``human`` noise model applies them. All pickles are read with an allowlist (numpy arrays only),
never with a bare ``pickle.load`` / ``torch.load(weights_only=False)``.
"""

from __future__ import annotations

import codecs
import functools
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.data import locate
from lossbench.data.hub import HubUnavailable, load_hf_dataset
from lossbench.data.sources import SOURCES, RawSplits
from lossbench.errors import UserError, require

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR_N_URL = "github.com/UCSC-REAL/cifar-10-100n"


@dataclass(frozen=True)
class CifarSpec:
    """What differs between CIFAR-10 and CIFAR-100, in their native and HF layouts."""

    title: str
    key: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    hf_id: str
    hf_label_cols: tuple[str, ...]
    human_file: str
    human_keys: tuple[str, ...]
    default_human_key: str


CIFAR10 = CifarSpec(
    title="CIFAR-10", key="cifar10", folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
    label_key=b"labels", num_classes=10, hf_id="uoft-cs/cifar10", hf_label_cols=("label",),
    human_file="CIFAR-10_human.pt",
    human_keys=("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3",
                "clean_label"),
    default_human_key="",  # five annotation sets, none canonical: the task must choose
)
CIFAR100 = CifarSpec(
    title="CIFAR-100", key="cifar100", folder="cifar-100-python",
    train_files=("train",), test_files=("test",),
    label_key=b"fine_labels", num_classes=100, hf_id="uoft-cs/cifar100",
    hf_label_cols=("fine_label", "label"),
    human_file="CIFAR-100_human.pt",
    human_keys=("noisy_label", "clean_label"),
    default_human_key="noisy_label",
)
_HUMAN_ALIASES = {"noise_label": "noisy_label"}  # the CIFAR-100 .npy release spells it so


# --- Safe unpickling --------------------------------------------------------------------------


def _multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


@functools.cache
def _numpy_globals() -> dict[tuple[str, str], Any]:
    multiarray = _multiarray()

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only containers, numbers, strings and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _numpy_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "numpy.dtypes" and name.endswith("DType") and hasattr(np, "dtypes"):
            return getattr(np.dtypes, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _safe_unpickle(raw: bytes, path: Path, encoding: str = "ASCII") -> Any:
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise UserError(f"cannot read {path}: {err}; expected the file as published") from None


# --- Native (python-version) folders ----------------------------------------------------------


def _native_folder(root: Path, spec: CifarSpec) -> Path | None:
    """``root`` itself or ``root/<folder>`` if it holds the python-version files, else None."""
    for cand in (root, root / spec.folder):
        if all((cand / f).is_file() for f in spec.train_files + spec.test_files):
            return cand
    return None


def _read_batches(folder: Path, names: tuple[str, ...], spec: CifarSpec) -> tuple[np.ndarray, ...]:
    """Images uint8 [N, 3, 32, 32], labels int64 [N], coarse labels int64 [N] (or empty)."""
    xs, ys, cs = [], [], []
    for name in names:
        path = folder / name
        batch = _safe_unpickle(path.read_bytes(), path, encoding="bytes")
        require(isinstance(batch, dict) and b"data" in batch and spec.label_key in batch,
                f"{path} is not a python-version {spec.title} batch (no data/"
                f"{spec.label_key.decode()}); get it from {CIFAR_URL}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        require(data.ndim == 2 and data.shape[1] == 3 * 32 * 32,
                f"{path}: data has shape {data.shape}; expected [N, 3072]")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[spec.label_key], dtype=np.int64))
        if b"coarse_labels" in batch:
            cs.append(np.asarray(batch[b"coarse_labels"], dtype=np.int64))
    coarse = np.concatenate(cs) if cs else np.empty(0, dtype=np.int64)
    return np.concatenate(xs), np.concatenate(ys), coarse


def _load_native(folder: Path, spec: CifarSpec) -> RawSplits:
    x_tr, y_tr, c_tr = _read_batches(folder, spec.train_files, spec)
    x_te, y_te, c_te = _read_batches(folder, spec.test_files, spec)
    meta: dict[str, Any] = {"origin": f"dir:{folder}"}
    if spec is CIFAR100:
        meta.update(coarse_train=c_tr, coarse_test=c_te)
    return RawSplits(x_tr, y_tr, x_te, y_te, spec.num_classes, "image", meta)


# --- Hugging Face -----------------------------------------------------------------------------


def _pick_column(columns: list[str], wanted: tuple[str, ...], what: str, hf_id: str) -> str:
    for col in wanted:
        if col in columns:
            return col
    raise UserError(f"Hugging Face dataset '{hf_id}' has no {what} column (tried "
                    f"{', '.join(wanted)}; found {', '.join(columns)}); set data.hf_id to a "
                    "CIFAR dataset with the uoft-cs layout")


def _hf_images(split: Any, col: str) -> np.ndarray:
    """Decoded images as uint8 [N, 3, 32, 32]."""
    images = np.asarray(split.with_format("numpy")[:][col])
    if images.dtype == object or images.ndim != 4 or images.shape[-1] != 3:
        images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in split[col]])
    require(images.shape[1:] == (32, 32, 3), f"images have shape {images.shape[1:]}; expected "
            "32x32x3 CIFAR images")
    return np.ascontiguousarray(images.astype(np.uint8).transpose(0, 3, 1, 2))


def _load_hf(spec: CifarSpec, hf_id: str, cache_dir: str) -> RawSplits:
    try:
        dsd = load_hf_dataset(hf_id, cache_dir)
    except HubUnavailable as reason:
        raise UserError(
            f"{spec.title} not found: pass --set data.dir=/path/to/{spec.folder} (the python "
            f"version from the CIFAR site, {CIFAR_URL}) or make Hugging Face dataset '{hf_id}' "
            f"available in the HF cache (set data.cache_dir / HF_HOME; {reason})"
        ) from None
    require("train" in dsd and "test" in dsd,
            f"Hugging Face dataset '{hf_id}' has splits {list(dsd)}; expected train and test")
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name in ("train", "test"):
        split = dsd[name]
        cols = list(split.column_names)
        img = _pick_column(cols, ("img", "image"), "image", hf_id)
        lab = _pick_column(cols, spec.hf_label_cols, "label", hf_id)
        coarse = np.empty(0, dtype=np.int64)
        if spec is CIFAR100:
            coarse = np.asarray(split[_pick_column(cols, ("coarse_label",), "coarse label",
                                                   hf_id)], dtype=np.int64)
        out[name] = (_hf_images(split, img), np.asarray(split[lab], dtype=np.int64), coarse)
    meta: dict[str, Any] = {"origin": f"hf:{hf_id}"}
    if spec is CIFAR100:
        meta.update(coarse_train=out["train"][2], coarse_test=out["test"][2])
    (x_tr, y_tr, _), (x_te, y_te, _) = out["train"], out["test"]
    return RawSplits(x_tr, y_tr, x_te, y_te, spec.num_classes, "image", meta)


# --- Human labels (CIFAR-N) -------------------------------------------------------------------


def _read_label_file(path: Path) -> dict[str, Any]:
    """The published dict of label arrays, from .pt (torch.save), .npy (np.save) or .npz."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    if suffix == ".npy":
        with path.open("rb") as f:
            fmt = np.lib.format
            version = fmt.read_magic(f)
            header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            _, _, dtype = header(f)
            if dtype.kind != "O":
                raise UserError(f"data.human_labels={path} holds a plain array; expected the "
                                f"published dict of label arrays ({CIFAR_N_URL})")
            obj = _safe_unpickle(f.read(), path)
        obj = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    elif zipfile.is_zipfile(path) or suffix in (".pt", ".pth"):
        try:
            obj = _torch_load(path)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
            raise UserError(f"cannot read data.human_labels={path} ({type(err).__name__}: "
                            f"{first}); expected the published .pt file ({CIFAR_N_URL})") from None
    else:
        raise UserError(f"data.human_labels={path}: unknown file type '{suffix}'; accepted: "
                        ".pt (as published), .npy, .npz")
    if not isinstance(obj, dict):
        raise UserError(f"data.human_labels={path} holds a {type(obj).__name__}; expected the "
                        f"published dict of label arrays ({CIFAR_N_URL})")
    return {_HUMAN_ALIASES.get(str(k), str(k)): v for k, v in obj.items()}


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with numpy arrays allowed (the published files hold
    numpy arrays); on a torch without ``safe_globals``, the archive's pickle is read directly."""
    import torch

    multiarray = _multiarray()
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            return _safe_unpickle(archive.read(name), path)
    allow = [np.ndarray, np.dtype, codecs.encode, multiarray._reconstruct,
             (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
             *{type(np.dtype(t)) for t in (np.int64, np.int32, np.uint8, np.int16)}]
    with torch.serialization.safe_globals(allow):
        return torch.load(path, map_location="cpu", weights_only=True)


def _as_labels(value: Any) -> np.ndarray:
    if hasattr(value, "numpy"):  # torch tensor
        value = value.numpy()
    return np.asarray(value).reshape(-1).astype(np.int64)


def _batch_alignment(file_clean: np.ndarray, y_train: np.ndarray, blocks: int) -> np.ndarray | None:
    """Index into the file's order that reproduces ``y_train``, if the two differ only by the
    order of the ``blocks`` training batches (HF built CIFAR-10 in the archive's batch order)."""
    n = len(y_train)
    if blocks < 2 or n % blocks or len(file_clean) != n:
        return None
    size = n // blocks
    order: list[int] = []
    for b in range(blocks):
        target = y_train[b * size:(b + 1) * size]
        hits = [j for j in range(blocks)
                if np.array_equal(file_clean[j * size:(j + 1) * size], target)]
        if len(hits) != 1 or hits[0] in order:
            return None
        order.append(hits[0])
    return np.concatenate([np.arange(j * size, (j + 1) * size) for j in order])


def attach_human_labels(raw: RawSplits, spec: CifarSpec, path_text: str, key: str) -> None:
    """Load CIFAR-N labels, check them against ``raw.y_train``, put them in ``raw.meta``."""
    path = Path(path_text).expanduser()
    require(path.is_file(), f"data.human_labels={path_text} is not a file; download "
            f"{spec.human_file} from {CIFAR_N_URL}")
    key = key or spec.default_human_key
    require(bool(key), f"data.human_labels is set but data.human_key is empty; accepted: "
            f"{', '.join(spec.human_keys)}")
    table = _read_label_file(path)
    require("clean_label" in table, f"data.human_labels={path_text} has no 'clean_label' "
            f"(keys: {', '.join(table)}); expected the published {spec.human_file}")
    require(key in table and key in spec.human_keys,
            f"data.human_key={key!r} is not a {spec.title}N annotation; accepted: "
            f"{', '.join(k for k in spec.human_keys if k in table)}")
    clean, noisy = _as_labels(table["clean_label"]), _as_labels(table[key])
    n = len(raw.y_train)
    require(len(clean) == n and len(noisy) == n,
            f"data.human_labels={path_text} has {len(noisy)} labels for {n} training images; "
            f"expected one per training image (50,000 for {spec.title}: {spec.human_file})")
    require(int(noisy.min()) >= 0 and int(noisy.max()) < spec.num_classes,
            f"data.human_key={key!r} has labels outside 0..{spec.num_classes - 1}; pick a fine "
            f"label key: {', '.join(spec.human_keys)}")
    alignment = "identity"
    if not np.array_equal(clean, raw.y_train):
        order = _batch_alignment(clean, raw.y_train, len(spec.train_files))
        require(order is not None,
                f"data.human_labels={path_text}: its clean_label does not match the loaded "
                f"{spec.title} training labels (another dataset, or another image order such "
                f"as the TFDS '_ordered' file); use {spec.human_file} with data.dir=/path/to/"
                f"{spec.folder}")
        clean, noisy = clean[order], noisy[order]
        alignment = "batches reordered"
    raw.meta.update(human_labels=noisy, human_key=key, human_alignment=alignment,
                    human_rate=float(np.mean(noisy != clean)))


# --- Sources ----------------------------------------------------------------------------------


def load_cifar(spec: CifarSpec, dir: str, hf_id: str, cache_dir: str, human_labels: str,
               human_key: str) -> RawSplits:
    """``data.dir``, else ``../shared/data``, else Hugging Face; then optional human labels."""
    raw: RawSplits | None = None
    if dir:
        root = Path(dir).expanduser()
        require(root.is_dir(), f"data.dir={dir} is not a folder; expected {spec.folder} (the "
                f"python version from {CIFAR_URL}) or its parent")
        folder = _native_folder(root, spec)
        require(folder is not None,
                f"data.dir={dir} has no {spec.title} python-version files "
                f"({', '.join(spec.train_files + spec.test_files)}); expected {spec.folder} "
                f"from {CIFAR_URL} or its parent")
        raw = _load_native(folder, spec)
    else:
        for root in (*locate.search_roots(spec.key), locate.SHARED_DATA):
            folder = _native_folder(root, spec) if root.is_dir() else None
            if folder is not None:
                raw = _load_native(folder, spec)
                break
    if raw is None:
        raw = _load_hf(spec, hf_id or spec.hf_id, cache_dir)
    raw.meta["asym_map"] = spec.key
    if human_labels:
        attach_human_labels(raw, spec, human_labels, human_key)
    return raw


@SOURCES.register("cifar10")
def cifar10(dir: str = "", hf_id: str = "", cache_dir: str = "", human_labels: str = "",
            human_key: str = "") -> RawSplits:
    """CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB, 10 classes); CIFAR-10N via human_labels.

    ``dir``: the python-version folder (``cifar-10-batches-py``) or its parent; else
    ``../shared/data``; else Hugging Face ``hf_id`` (default uoft-cs/cifar10, cached when
    offline). ``human_labels``: path to CIFAR-10_human.pt (Wei et al., ICLR 2022) with
    ``human_key`` one of aggre_label, worse_label, random_label1..3.
    """
    return load_cifar(CIFAR10, dir, hf_id, cache_dir, human_labels, human_key)


@SOURCES.register("cifar100")
def cifar100(dir: str = "", hf_id: str = "", cache_dir: str = "", human_labels: str = "",
             human_key: str = "") -> RawSplits:
    """CIFAR-100 (50,000 / 10,000, 100 fine classes in 20 superclasses); CIFAR-100N labels.

    Same lookup as cifar10 (``cifar-100-python``, uoft-cs/cifar100). Superclass labels go to
    ``meta["coarse_train"]`` / ``meta["coarse_test"]``; ``human_labels``: CIFAR-100_human.pt,
    ``human_key`` noisy_label (default).
    """
    return load_cifar(CIFAR100, dir, hf_id, cache_dir, human_labels, human_key)
