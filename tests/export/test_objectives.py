"""Each loss on inputs where the answer is known by hand."""

from __future__ import annotations

import math

import pytest
import torch

from export.objectives import MaskedReconstruction, cca_ssg_loss, retrieval_loss, scaled_cosine_error


def test_retrieval_loss_is_the_softmax_cross_entropy_of_the_diagonal() -> None:
    users = torch.eye(2)
    loss = retrieval_loss(users, users, torch.tensor([0, 1]), torch.zeros(2), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_temperature_sharpens_the_softmax() -> None:
    users = torch.eye(2)
    loss = retrieval_loss(users, users, torch.tensor([0, 1]), torch.zeros(2), temperature=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_an_accidental_hit_is_not_a_negative() -> None:
    users = torch.eye(2)
    candidates = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # both rows' positive is candidate 7
    loss = retrieval_loss(users, candidates, torch.tensor([7, 7]), torch.zeros(2), temperature=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_log_q_correction_subtracts_each_columns_log_probability() -> None:
    users = torch.eye(2)
    log_q = torch.tensor([0.0, 1.0])  # column 1 is e times as likely to be sampled
    loss = retrieval_loss(users, users, torch.tensor([0, 1]), log_q, temperature=1.0)
    row0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(0 - 1)))
    row1 = -math.log(math.exp(0) / (math.exp(0) + math.exp(1 - 1)))
    assert loss.item() == pytest.approx((row0 + row1) / 2)


def test_extra_negatives_join_the_softmax_and_can_be_accidental_hits_too() -> None:
    users = torch.eye(2)
    extra = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([0, 1])
    loss = retrieval_loss(
        users,
        users,
        ids,
        torch.zeros(2),
        1.0,
        negatives=extra,
        negative_ids=torch.tensor([5, 1]),
        negative_log_q=torch.zeros(2),
    )
    row0 = math.log(math.exp(1) + 1 + math.exp(1) + 1) - 1  # extra 5 is a true negative equal to the positive
    row1 = math.log(math.exp(1) + 1 + 1) - 1  # extra 1 is row 1's own candidate: masked
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_own_ids_mask_the_user_itself_as_a_candidate() -> None:
    users = torch.eye(2)
    loss = retrieval_loss(users, users, torch.tensor([10, 11]), torch.zeros(2), 1.0, own_ids=torch.tensor([11, 10]))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def orthogonal_design() -> torch.Tensor:
    """Four rows whose two standardised columns are exactly uncorrelated with unit variance."""
    return torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])


def test_cca_ssg_is_zero_for_identical_decorrelated_views() -> None:
    z = orthogonal_design() * 3.0 + 5.0  # standardisation removes scale and shift
    assert cca_ssg_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)


def test_cca_ssg_invariance_counts_the_squared_distance_between_views() -> None:
    z1 = orthogonal_design()
    z2 = z1[:, [1, 0]]  # the same columns swapped: each row moves by a squared distance of 0 or 8
    assert cca_ssg_loss(z1, z2, decorrelation=0.0).item() == pytest.approx((0 + 8 + 8 + 0) / 4)


def test_cca_ssg_decorrelation_penalises_collapsed_dimensions() -> None:
    column = torch.tensor([1.0, -1.0, 1.0, -1.0])
    z = torch.stack([column, column], dim=1)  # two copies of one dimension: off-diagonal correlation 1
    assert cca_ssg_loss(z, z, decorrelation=1.0).item() == pytest.approx(2 * 2.0)


def test_scaled_cosine_error_is_zero_one_and_two_to_the_alpha() -> None:
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    guesses = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    errors = [scaled_cosine_error(guesses[i : i + 1], target[i : i + 1], alpha=3.0).item() for i in range(3)]
    assert errors == pytest.approx([0.0, 1.0, 8.0])


def test_masked_reconstruction_trains_its_decoder_to_recover_the_masked_parts() -> None:
    torch.manual_seed(0)
    dim, fields = 4, 3
    task = MaskedReconstruction(fields, dim)
    encoder = torch.nn.Linear(fields * dim, dim)
    optimizer = torch.optim.Adam([*task.parameters(), *encoder.parameters()], lr=1e-2)
    # Each row's parts are one shared direction, so any unmasked part tells what the masked ones were.
    direction = torch.nn.functional.normalize(torch.randn(64, dim), dim=-1)
    parts = [direction * (i + 1) for i in range(fields)]
    generator = torch.Generator().manual_seed(0)

    def step() -> torch.Tensor:
        masked = task.mask(parts, rate=0.3, generator=generator)
        assert masked.masked.any(dim=1).all()
        return task.loss(encoder(masked.inputs), masked, alpha=2.0)

    first = step().item()
    for _ in range(1000):
        loss = step()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    assert task.tokens.grad is not None and task.tokens.grad.abs().sum() > 0


def test_masking_replaces_exactly_the_masked_parts_with_their_tokens() -> None:
    dim, fields = 3, 4
    task = MaskedReconstruction(fields, dim)
    with torch.no_grad():
        task.tokens.copy_(torch.full((fields, dim), -7.0))
    parts = [torch.full((5, dim), float(i + 1)) for i in range(fields)]
    masked = task.mask(parts, rate=0.5, generator=torch.Generator().manual_seed(1))
    inputs = masked.inputs.view(5, fields, dim)
    for field in range(fields):
        expected = torch.where(masked.masked[:, field], -7.0, float(field + 1))
        assert torch.equal(inputs[:, field, 0], expected)
    assert masked.masked.any(dim=1).all() and not masked.masked.all()
    assert not masked.targets.requires_grad
