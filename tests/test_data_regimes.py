"""Regimes by image count: nested for every size, class-balanced where the dataset has labels."""

import pytest
import torch

from tests.conftest import TINY_TRIAL
from trainables.config import load_trial_config
from trainables.config_io import ConfigError
from trainables.data import DatasetError, load_digits, regime_indices, regime_size
from trainables.loop import run_trial
from trainables.session import LocalSession

SIZES = (10, 18, 36, 72, 144, 288)


@pytest.fixture(scope="module")
def labels():
    return load_digits().train_labels


def class_counts(indices: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.bincount(labels[indices], minlength=10)


@pytest.mark.parametrize("size", SIZES)
def test_every_prefix_is_class_balanced(labels, size):
    counts = class_counts(regime_indices(len(labels), size, seed=0, labels=labels), labels)
    assert counts.sum() == size and counts.min() >= 1 and counts.max() - counts.min() <= 1



@pytest.mark.parametrize("size", (2, 4, 7))
def test_below_the_class_count_a_subset_holds_one_image_of_each_of_n_classes(labels, size):
    """Where an adaptive design goes below one image per class (docs/config.md, design.min_images): n images of n
    different classes, and the smaller subsets are prefixes of the larger ones."""
    indices = regime_indices(len(labels), size, seed=0, labels=labels)
    assert class_counts(indices, labels).max() == 1 and len(set(labels[indices].tolist())) == size
    assert torch.equal(indices, regime_indices(len(labels), 10, seed=0, labels=labels)[:size])

def test_eighteen_digits_hold_each_digit_about_twice(labels):
    counts = class_counts(regime_indices(len(labels), 18, seed=3, labels=labels), labels)
    assert sorted(counts.tolist()) == [1, 1] + [2] * 8


@pytest.mark.parametrize("balanced", [True, False])
def test_regimes_are_prefixes_of_one_order(labels, balanced):
    given = labels if balanced else None
    largest = regime_indices(len(labels), 288, seed=0, labels=given)
    for size in SIZES:
        assert torch.equal(regime_indices(len(labels), size, seed=0, labels=given), largest[:size])
    assert len(set(largest.tolist())) == 288


def test_order_is_fixed_by_the_seed(labels):
    first, again, other = (regime_indices(len(labels), 72, seed=s, labels=labels) for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_unlabelled_regime_is_the_seeded_permutation():
    expected = torch.randperm(1438, generator=torch.Generator().manual_seed(5))[:72]
    assert torch.equal(regime_indices(1438, 72, seed=5), expected)


def test_image_count_wins_over_fraction():
    assert regime_size(1438, fraction=0.5, images=72) == 72
    assert regime_size(1438, fraction=0.05) == round(1438 * 0.05) and regime_size(1438, fraction=1e-6) == 2


def test_regime_larger_than_the_pool_names_both_numbers():
    with pytest.raises(DatasetError, match="2000.*1438"):
        regime_size(1438, images=2000)


def test_a_trial_with_too_many_images_stops_before_training(tmp_path):
    config = load_trial_config(None, TINY_TRIAL + ["regime_images=5000"])
    with pytest.raises(DatasetError, match="5000.*1438"):
        run_trial(config, LocalSession(tmp_path), log=lambda _: None)
    with pytest.raises(ConfigError, match="regime_images"):
        load_trial_config(None, ["regime_images=1"])
