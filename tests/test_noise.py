"""Label-noise models: rates, transition matrices, determinism, and the published flip maps."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from lossbench.data.noise import (
    CIFAR10_FLIPS,
    CIFAR100_COARSE_NAMES,
    CIFAR100_COARSE_OF,
    CIFAR100_FINE_NAMES,
    CIFAR100_FLIPS,
    CIFAR100_SUPERCLASSES,
    FASHION_MNIST_FLIPS,
    LETTER_PAIRS,
    MNIST_FLIPS,
    NOISE,
    VOWEL_PAIRS,
    apply_noise,
    check_noise,
    labels_hash,
)
from lossbench.errors import UserError


def balanced(num_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


Y10 = balanced(10, 10_000)  # 100k labels: rates within ~0.005 of their expectation


def test_registry_lists_the_kinds() -> None:
    assert NOISE.names() == ["asym", "class-dependent", "human", "none", "pairflip", "symmetric",
                             "uniform"]


def test_none_is_identity_and_reported() -> None:
    noisy, rep = apply_noise(Y10, 10, "none", {}, seed=0)
    assert np.array_equal(noisy, Y10)
    assert rep.realised_rate == 0.0 and rep.requested_rate == 0.0
    assert np.allclose(np.array(rep.transition), np.eye(10))


@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
def test_realised_rate_and_transition_rows(kind: str) -> None:
    noisy, rep = apply_noise(Y10, 10, kind, {"rate": 0.4}, seed=3)
    assert rep.kind == kind and rep.seed == 3 and rep.requested_rate == 0.4
    assert abs(rep.realised_rate - 0.4) < 0.01
    assert rep.realised_rate == pytest.approx(float(np.mean(noisy != Y10)))
    t = np.array(rep.transition)
    assert t.shape == (10, 10)
    assert np.allclose(t.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.diag(t), 0.6, atol=0.02)
    assert rep.labels_hash == labels_hash(noisy) and len(rep.labels_hash) == 16
    json.dumps(asdict(rep))  # stored with the run record


def test_same_seed_same_labels_other_seed_different() -> None:
    a, ra = apply_noise(Y10, 10, "symmetric", {"rate": 0.3}, seed=7)
    np.random.seed(123)  # the global generator must not matter
    b, rb = apply_noise(Y10, 10, "symmetric", {"rate": 0.3}, seed=7)
    c, rc = apply_noise(Y10, 10, "symmetric", {"rate": 0.3}, seed=8)
    assert np.array_equal(a, b) and ra.labels_hash == rb.labels_hash
    assert not np.array_equal(a, c) and ra.labels_hash != rc.labels_hash


def test_input_labels_are_not_modified() -> None:
    y = Y10.copy()
    apply_noise(y, 10, "symmetric", {"rate": 0.5}, seed=0)
    assert np.array_equal(y, Y10)


def test_symmetric_never_keeps_true_class_unless_include_true() -> None:
    noisy, rep = apply_noise(Y10, 10, "symmetric", {"rate": 0.5}, seed=1)
    flipped = noisy != Y10
    t = np.array(rep.transition)
    off = t[~np.eye(10, dtype=bool)].reshape(10, 9)
    assert np.allclose(off, 0.5 / 9, atol=0.01)  # uniform over the OTHER classes
    assert abs(flipped.mean() - 0.5) < 0.01  # every replacement changed the label
    _, rep_in = apply_noise(Y10, 10, "symmetric", {"rate": 0.5, "include_true": "true"}, seed=1)
    assert abs(rep_in.realised_rate - 0.5 * 9 / 10) < 0.01
    assert rep_in.params["include_true"] is True


def test_asym_cifar10_is_simultaneous() -> None:
    noisy, rep = apply_noise(Y10, 10, "asym", {"rate": 0.99, "map": "cifar10"}, seed=0)
    t = np.array(rep.transition)
    assert t[3, 5] > 0.97 and t[5, 3] > 0.97  # cat<->dog, flipped from the CLEAN labels once
    for src, dst in CIFAR10_FLIPS.items():
        assert set(np.unique(noisy[np.equal(Y10, src)])) <= {src, dst}
    untouched = ~np.isin(Y10, list(CIFAR10_FLIPS))
    assert np.array_equal(noisy[untouched], Y10[untouched])
    assert CIFAR10_FLIPS == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def test_asym_rate_is_per_source_class() -> None:
    _, rep = apply_noise(Y10, 10, "asym", {"rate": 0.4, "map": "mnist"}, seed=0)
    t = np.array(rep.transition)
    for src, dst in MNIST_FLIPS.items():
        assert abs(t[src, dst] - 0.4) < 0.03
    assert abs(rep.realised_rate - 0.4 * len(MNIST_FLIPS) / 10) < 0.01
    assert MNIST_FLIPS == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


def test_asym_auto_takes_the_sources_map() -> None:
    a, _ = apply_noise(Y10, 10, "asym", {"rate": 0.3}, seed=0, meta={"asym_map": "cifar10"})
    b, _ = apply_noise(Y10, 10, "asym", {"rate": 0.3, "map": "cifar10"}, seed=0)
    assert np.array_equal(a, b)
    with pytest.raises(UserError, match=r"noise\.map="):
        apply_noise(Y10, 10, "asym", {"rate": 0.3}, seed=0)
    with pytest.raises(UserError, match="100 classes"):
        apply_noise(Y10, 10, "asym", {"rate": 0.3, "map": "cifar100"}, seed=0)


def test_cifar100_superclass_table() -> None:
    ids = sorted(i for group in CIFAR100_SUPERCLASSES for i in group)
    assert ids == list(range(100))  # a partition of the 100 fine classes
    assert len(CIFAR100_SUPERCLASSES) == 20 and all(len(g) == 5 for g in CIFAR100_SUPERCLASSES)
    assert list(CIFAR100_FINE_NAMES) == sorted(CIFAR100_FINE_NAMES)
    assert CIFAR100_FINE_NAMES[:7] == ("apple", "aquarium_fish", "baby", "bear", "beaver", "bed",
                                       "bee")
    assert CIFAR100_FINE_NAMES[99] == "worm" and CIFAR100_FINE_NAMES[19] == "cattle"
    aquatic = CIFAR100_SUPERCLASSES[CIFAR100_COARSE_NAMES.index("aquatic_mammals")]
    assert aquatic == (4, 30, 55, 72, 95)
    assert [CIFAR100_FINE_NAMES[i] for i in aquatic] == ["beaver", "dolphin", "otter", "seal",
                                                          "whale"]
    assert CIFAR100_COARSE_NAMES[0] == "aquatic_mammals"
    assert CIFAR100_COARSE_NAMES[19] == "vehicles_2"
    assert CIFAR100_SUPERCLASSES[1] == (1, 32, 67, 73, 91)  # fish: aquarium_fish ... trout
    assert not any(g == tuple(range(g[0], g[0] + 5)) for g in CIFAR100_SUPERCLASSES)


def test_cifar100_flips_within_superclass_as_a_cycle() -> None:
    for group in CIFAR100_SUPERCLASSES:
        assert [CIFAR100_FLIPS[i] for i in group] == [*group[1:], group[0]]
    assert CIFAR100_FLIPS[95] == 4  # whale -> beaver (circular)
    y = balanced(100, 200)
    noisy, rep = apply_noise(y, 100, "asym", {"rate": 0.4, "map": "cifar100"}, seed=0)
    assert np.array_equal(CIFAR100_COARSE_OF[noisy], CIFAR100_COARSE_OF[y])
    assert abs(rep.realised_rate - 0.4) < 0.02
    assert np.allclose(np.array(rep.transition).sum(axis=1), 1.0, atol=1e-5)


def test_cifar100_checks_the_sources_coarse_labels() -> None:
    y = balanced(100, 5)
    meta = {"asym_map": "cifar100", "coarse_train": CIFAR100_COARSE_OF[y]}
    apply_noise(y, 100, "asym", {"rate": 0.2}, seed=0, meta=meta)
    bad = {"asym_map": "cifar100", "coarse_train": y // 5}  # the "blocks of five" mistake
    with pytest.raises(UserError, match="superclass table"):
        apply_noise(y, 100, "asym", {"rate": 0.2}, seed=0, meta=bad)


def test_pairflip_moves_to_next_class() -> None:
    noisy, _ = apply_noise(Y10, 10, "pairflip", {"rate": 0.3}, seed=0)
    changed = noisy != Y10
    assert np.array_equal(noisy[changed], (Y10[changed] + 1) % 10)
    assert set(np.unique(noisy[Y10 == 9])) == {9, 0}


def test_human_uses_source_labels() -> None:
    y = balanced(10, 10)
    human = (y + (np.arange(len(y)) % 4 == 0)) % 10
    noisy, rep = apply_noise(y, 10, "human", {}, seed=0,
                             meta={"human_labels": human, "human_key": "worse_label"})
    assert np.array_equal(noisy, human)
    assert rep.realised_rate == pytest.approx(0.25) and rep.requested_rate == rep.realised_rate
    assert rep.params["human_key"] == "worse_label"
    with pytest.raises(UserError, match=r"data\.human_labels=/path/CIFAR-10_human\.pt"):
        apply_noise(y, 10, "human", {}, seed=0, meta={})
    with pytest.raises(UserError, match="entries"):
        apply_noise(y, 10, "human", {}, seed=0, meta={"human_labels": human[:-1]})


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_rate_out_of_range(rate: float) -> None:
    with pytest.raises(UserError, match=f"rate={rate}") as err:
        apply_noise(Y10, 10, "symmetric", {"rate": rate}, seed=0)
    assert "\n" not in str(err.value)


def test_user_mistakes_are_one_line() -> None:
    with pytest.raises(UserError, match="accepted: asym, class-dependent, human, none, pairflip"):
        apply_noise(Y10, 10, "gaussian", {}, seed=0)
    with pytest.raises(UserError, match=r"noise\.kind=symmetric"):
        apply_noise(Y10, 10, "none", {"rate": 0.4}, seed=0)
    with pytest.raises(UserError, match="unknown parameter 'map'"):
        apply_noise(Y10, 10, "symmetric", {"map": "cifar10"}, seed=0)
    with pytest.raises(UserError, match="accepted: auto, mnist, cifar10, cifar100"):
        apply_noise(Y10, 10, "asym", {"rate": 0.2, "map": "imagenet"}, seed=0)
    with pytest.raises(UserError, match="own rate"):
        apply_noise(Y10, 10, "human", {"rate": 0.2}, seed=0, meta={"human_labels": Y10})


def test_labels_hash_ignores_dtype() -> None:
    assert labels_hash(Y10.astype(np.int32)) == labels_hash(Y10)


def test_check_noise_without_data() -> None:
    assert check_noise("symmetric", {"rate": "0.4"}) == {"rate": 0.4, "include_true": False}
    assert check_noise("asym", {"rate": 0.2}) == {"rate": 0.2, "map": "auto"}
    with pytest.raises(UserError, match=r"rate=1\.0"):
        check_noise("pairflip", {"rate": 1})
    with pytest.raises(UserError, match="unknown noise model 'flip'"):
        check_noise("flip", {})


# --- The LDR paper's models and the GCE Fashion-MNIST map -----------------------------------------


def test_uniform_draws_among_all_classes_so_the_realised_rate_is_lower() -> None:
    y = balanced(26, 10_000)
    noisy, rep = apply_noise(y, 26, "uniform", {"rate": 0.6}, seed=0)
    assert rep.kind == "uniform" and rep.requested_rate == 0.6
    assert abs(rep.realised_rate - 0.6 * 25 / 26) < 0.004  # 0.577, not 0.6
    t = np.array(rep.transition)
    assert np.allclose(np.diag(t), 1 - 0.6 + 0.6 / 26, atol=0.02)
    assert np.allclose(t[~np.eye(26, dtype=bool)], 0.6 / 26, atol=0.01)
    same, _ = apply_noise(y, 26, "symmetric", {"rate": 0.6, "include_true": True}, seed=0)
    assert np.array_equal(noisy, same)  # one model under the paper's name


def test_ldr_pair_maps_are_the_official_swaps() -> None:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    pairs = {frozenset((letters[a], letters[b])) for a, b in LETTER_PAIRS.items()}
    assert pairs == {frozenset(p) for p in ("BD", "CG", "EF", "HN", "IL", "KX", "MW", "OQ", "PR",
                                             "UV")}
    assert all(LETTER_PAIRS[b] == a for a, b in LETTER_PAIRS.items())  # swaps, not cycles
    assert VOWEL_PAIRS == {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4, 6: 7, 7: 6, 8: 9, 9: 8}


@pytest.mark.parametrize(("pair_map", "k", "paired"), [("letter", 26, 20), ("vowel", 11, 10)])
def test_class_dependent_swaps_partners_only(pair_map: str, k: int, paired: int) -> None:
    y = balanced(k, 6000)
    noisy, rep = apply_noise(y, k, "class-dependent", {"rate": 0.3}, seed=1,
                             meta={"pair_map": pair_map})
    partner = dict(LETTER_PAIRS if pair_map == "letter" else VOWEL_PAIRS)
    changed = noisy != y
    assert all(partner[a] == b for a, b in zip(y[changed], noisy[changed], strict=True))
    alone = ~np.isin(y, list(partner))
    assert not changed[alone].any()
    assert abs(rep.realised_rate - 0.3 * paired / k) < 0.006
    t = np.array(rep.transition)
    assert all(abs(t[a, b] - 0.3) < 0.03 for a, b in partner.items())
    named, _ = apply_noise(y, k, "class-dependent", {"rate": 0.3, "map": pair_map}, seed=1)
    assert np.array_equal(named, noisy)


def test_class_dependent_needs_an_ldr_map() -> None:
    with pytest.raises(UserError, match=r"no LDR pair map; set noise\.map=letter\|vowel"):
        apply_noise(Y10, 10, "class-dependent", {"rate": 0.3}, seed=0)
    with pytest.raises(UserError, match="accepted: auto, letter, vowel, news20"):
        apply_noise(Y10, 10, "class-dependent", {"rate": 0.3, "map": "cifar10"}, seed=0)
    with pytest.raises(UserError, match="26 classes"):
        apply_noise(Y10, 10, "class-dependent", {"rate": 0.3, "map": "letter"}, seed=0)


def test_fashion_mnist_map_is_gces() -> None:
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot")
    flips = {names[a]: names[b] for a, b in FASHION_MNIST_FLIPS.items()}
    assert flips == {"Ankle boot": "Sneaker", "Sneaker": "Sandal", "Pullover": "Shirt",
                     "Coat": "Dress", "Dress": "Coat"}
    a, rep = apply_noise(Y10, 10, "asym", {"rate": 0.4}, seed=0,
                         meta={"asym_map": "fashion-mnist"})
    assert abs(rep.realised_rate - 0.4 * 5 / 10) < 0.01
    assert set(np.unique(a[Y10 == 9])) == {9, 7}  # a boot becomes a sneaker, never a sandal
