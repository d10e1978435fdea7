"""The candidate table's propagation over the train graph, on graphs small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import torch

from export.towers import CandidateTable, Propagation, SparseProduct, normalised_matrix

# Two users: user 0 touched candidates 0 and 1, user 1 touched candidates 1 and 2; row 3 is the unknown bucket.
TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 2]])


def dense_layer(table: np.ndarray) -> np.ndarray:
    users = np.stack([(table[0] + table[1]) / 2, (table[1] + table[2]) / 2])
    return np.stack([users[0], (users[0] + users[1]) / 2, users[1], np.zeros_like(users[0])])


def test_normalised_matrix_averages_each_rows_partners_and_carries_its_transpose() -> None:
    matrix, transposed = normalised_matrix(TRAIN[:, 0], TRAIN[:, 1], (2, 4))
    expected = np.array([[0.5, 0.5, 0, 0], [0, 0.5, 0.5, 0]], dtype=np.float32)
    assert np.array_equal(matrix.to_dense().numpy(), expected)
    assert np.array_equal(transposed.to_dense().numpy(), expected.T)


def test_symmetric_weights_divide_by_the_root_of_both_degrees() -> None:
    matrix, transposed = normalised_matrix(TRAIN[:, 0], TRAIN[:, 1], (2, 4), symmetric=True)
    # Both users have degree 2; candidates 0 and 2 degree 1, candidate 1 degree 2.
    half, root = 1 / np.sqrt(2), 0.5
    expected = np.array([[half, root, 0, 0], [0, root, half, 0]], dtype=np.float32)
    assert np.allclose(matrix.to_dense().numpy(), expected)
    assert np.allclose(transposed.to_dense().numpy(), expected.T)


def test_propagation_adds_each_layer_scaled_by_its_power_of_the_weight() -> None:
    table = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    propagated = Propagation(TRAIN, num_users=2, rows=4, layers=2, weight=0.5)(torch.from_numpy(table)).numpy()
    first = dense_layer(table)
    expected = table + 0.5 * first + 0.25 * dense_layer(first)
    assert np.allclose(propagated, expected, atol=1e-6)
    assert np.array_equal(propagated[3], table[3])  # no user touched the unknown bucket: it keeps its own row


def test_the_sparse_products_gradient_is_the_dense_products() -> None:
    matrix, transposed = normalised_matrix(TRAIN[:, 0], TRAIN[:, 1], (2, 4))
    x = torch.randn(4, 3, requires_grad=True)
    weights = torch.randn(2, 3)
    (SparseProduct.apply(matrix, transposed, x) * weights).sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad, matrix.to_dense().T @ weights, atol=1e-6)


def test_a_table_without_propagation_reads_its_own_rows() -> None:
    table = CandidateTable(rows=4, dim=3)
    ids = torch.tensor([[2, 0]])
    assert torch.equal(table(ids), table.ids.weight[ids])


def test_a_propagated_table_reads_the_table_refreshed_last_until_refreshed_again() -> None:
    table = CandidateTable(rows=4, dim=3, propagation=Propagation(TRAIN, 2, 4, layers=1, weight=1.0))
    ids = torch.tensor([0, 1, 2, 3])
    before = table(ids).detach().numpy()
    own = table.ids.weight.detach().numpy()
    assert np.allclose(before, own + dense_layer(own), atol=1e-6)
    with torch.no_grad():
        table.ids.weight.add_(1.0)
    assert np.array_equal(table(ids).detach().numpy(), before)
    table.refresh()
    assert not np.allclose(table(ids).detach().numpy(), before)
    table(ids).sum().backward()
    assert table.ids.weight.grad is not None and bool(table.ids.weight.grad[1].abs().sum() > 0)
