"""NT-Xent and SupCon against loop-based NumPy ports of the papers' equations, closed-form values,
the gathered-negatives contract of the distributed trainer, gradients, devices and dtypes."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from regionmir.contrastive_losses import NTXentLoss, SupervisedContrastiveLoss

# --- NumPy references, written from the papers, loops on purpose -----------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def simclr_reference(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """SimCLR Algorithm 1: views interleaved as z_{2k-1}, z_{2k}; sim = cosine;
    ℓ(i,j) = -log exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ); L = 1/(2N) Σ_k [ℓ(2k-1,2k) + ℓ(2k,2k-1)]."""
    n = z1.shape[0]
    z = [None] * (2 * n)
    for k in range(n):
        z[2 * k], z[2 * k + 1] = _unit(z1[k]), _unit(z2[k])
    s = [[float(z[i] @ z[j]) for j in range(2 * n)] for i in range(2 * n)]

    def loss_term(i: int, j: int) -> float:
        denominator = sum(math.exp(s[i][k] / temperature) for k in range(2 * n) if k != i)
        return -math.log(math.exp(s[i][j] / temperature) / denominator)

    return sum(loss_term(2 * k, 2 * k + 1) + loss_term(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def supcon_reference(z1: np.ndarray, z2: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Khosla et al. eq. (2), L_out, averaged over the 2N anchors of the multiviewed batch:
    L_i = -1/|P(i)| Σ_{p∈P(i)} log exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ),
    A(i) = all views but i, P(i) = {p ∈ A(i): y_p = y_i}."""
    z = [_unit(v) for v in np.concatenate([z1, z2])]
    y = list(labels) + list(labels)
    total = 0.0
    for i in range(len(z)):
        a_of_i = [a for a in range(len(z)) if a != i]
        p_of_i = [p for p in a_of_i if y[p] == y[i]]
        denominator = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in a_of_i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / temperature) / denominator) for p in p_of_i) / len(p_of_i)
    return total / len(z)


def _views(batch: int, dim: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch, dim, generator=generator, dtype=dtype)
    # The second view is a noisy copy, so positives are more similar than negatives, as in training.
    z2 = z1 + 0.5 * torch.randn(batch, dim, generator=generator, dtype=dtype)
    return z1, z2


# --- (1) NT-Xent against the SimCLR pseudocode ------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("batch, dim, seed", [(2, 3, 0), (5, 8, 1), (16, 32, 2)])
def test_ntxent_matches_simclr_pseudocode(temperature, batch, dim, seed):
    z1, z2 = _views(batch, dim, seed)
    loss = NTXentLoss(temperature)(z1, z2)
    assert loss.item() == pytest.approx(simclr_reference(z1.numpy(), z2.numpy(), temperature), rel=1e-9)


# --- (2) closed-form values ---------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_ntxent_closed_form_orthogonal_crops_identical_views(temperature):
    # B=2: crop 0 -> e1 in both views, crop 1 -> e2 in both views. For the anchor z1_0 = e1 the
    # candidates k≠i are z2_0 = e1 (cos 1, the positive), z1_1 = e2 and z2_1 = e2 (cos 0), so
    #   l = -log( e^{1/τ} / (e^{1/τ} + e^0 + e^0) ) = log(1 + 2 e^{-1/τ}),
    # and by symmetry all four anchors give the same value, which is the mean.
    e1, e2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    z = torch.stack([e1, e2])
    expected = math.log(1 + 2 * math.exp(-1 / temperature))
    assert NTXentLoss(temperature)(z, z.clone()).item() == pytest.approx(expected, rel=1e-12)


def test_ntxent_closed_form_all_views_identical():
    # Every cosine is 1, so each anchor's softmax over its 2N-1 candidates is uniform:
    #   l = -log(1 / (2N-1)) = log(2N-1); with N=3, log 5, whatever τ.
    z = torch.ones(3, 4, dtype=torch.float64)
    assert NTXentLoss(0.2)(z, z).item() == pytest.approx(math.log(5), rel=1e-12)
    # SupCon with one shared label: every candidate is a positive with log-prob -log 5, so log 5 too.
    labels = torch.zeros(3, dtype=torch.long)
    assert SupervisedContrastiveLoss(0.2)(z, z, labels).item() == pytest.approx(math.log(5), rel=1e-12)


def test_ntxent_is_invariant_to_embedding_scale():
    # Normalisation happens inside the loss, so scaling a projection must change nothing.
    z1, z2 = _views(6, 5, 3)
    loss = NTXentLoss(0.1)
    assert loss(7.0 * z1, 0.01 * z2).item() == pytest.approx(loss(z1, z2).item(), rel=1e-12)


# --- (3) gathered negatives: two simulated ranks equal the global batch ----------------------------


@pytest.mark.parametrize("loss_class", [NTXentLoss, SupervisedContrastiveLoss])
@pytest.mark.parametrize("world", [2, 3])
def test_gathered_ranks_average_to_the_global_batch_loss_and_gradient(loss_class, world):
    batch = 4
    z1_data, z2_data = _views(world * batch, 6, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 3, 2, 0, 3, 3, 1][: world * batch])
    loss = loss_class(0.1)

    # One process that sees the whole global batch.
    z1_full = z1_data.clone().requires_grad_()
    z2_full = z2_data.clone().requires_grad_()
    global_loss = loss(z1_full, z2_full, labels)
    global_loss.backward()

    # `world` ranks: each scores its own slice against the gathered batch. Sharing the leaves makes
    # autograd sum every rank's gradient into the owner's rows, which is what gather_with_grad's
    # backward plus DDP's average do across processes.
    z1_shared = z1_data.clone().requires_grad_()
    z2_shared = z2_data.clone().requires_grad_()
    rank_losses = []
    for rank in range(world):
        rows = slice(rank * batch, (rank + 1) * batch)
        rank_losses.append(
            loss(z1_shared[rows], z2_shared[rows], labels[rows], gathered=(z1_shared, z2_shared, labels), rank=rank)
        )
    mean_loss = torch.stack(rank_losses).mean()
    mean_loss.backward()

    assert mean_loss.item() == pytest.approx(global_loss.item(), rel=1e-12)
    # NumPy, not torch.testing.assert_close, which imports DTensor on first use (seconds).
    np.testing.assert_allclose(z1_shared.grad.numpy(), z1_full.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(z2_shared.grad.numpy(), z2_full.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_gathered_with_world_one_equals_plain_loss():
    z1, z2 = _views(5, 4, 5)
    loss = NTXentLoss(0.1)
    assert loss(z1, z2, gathered=(z1, z2), rank=0).item() == pytest.approx(loss(z1, z2).item(), rel=1e-12)


# --- (4) gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_class", [NTXentLoss, SupervisedContrastiveLoss])
def test_gradients_reach_both_views(loss_class):
    z1, z2 = (v.requires_grad_() for v in _views(6, 5, 6))
    loss_class(0.1)(z1, z2, torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    for grad in (z1.grad, z2.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("loss_class", [NTXentLoss, SupervisedContrastiveLoss])
def test_gradient_matches_finite_differences(loss_class):
    # Central differences by hand: torch.autograd.gradcheck would do, but it imports DTensor (seconds).
    z1, z2 = _views(3, 4, 7)
    labels = torch.tensor([0, 1, 0])
    loss = loss_class(0.3)
    z1_leaf, z2_leaf = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss(z1_leaf, z2_leaf, labels).backward()
    eps = 1e-6
    for view, grad in ((0, z1_leaf.grad), (1, z2_leaf.grad)):
        numeric = torch.zeros_like(grad)
        for index in np.ndindex(*grad.shape):
            plus, minus = [z1.clone(), z2.clone()], [z1.clone(), z2.clone()]
            plus[view][index] += eps
            minus[view][index] -= eps
            numeric[index] = (loss(*plus, labels) - loss(*minus, labels)) / (2 * eps)
        np.testing.assert_allclose(grad.numpy(), numeric.numpy(), rtol=1e-6, atol=1e-8)


# --- (5) SupCon --------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
@pytest.mark.parametrize(
    "labels",
    [
        [0, 1, 0, 1, 2, 2],  # pairs of anatomies
        [3, 3, 3, 3, 3, 3],  # one anatomy: every view is a positive
        [0, 1, 2, 3, 4, 0],  # one repeated anatomy, the rest only their own other view
    ],
)
def test_supcon_matches_khosla_equation_2(temperature, labels):
    z1, z2 = _views(6, 8, 8)
    loss = SupervisedContrastiveLoss(temperature)(z1, z2, torch.tensor(labels))
    expected = supcon_reference(z1.numpy(), z2.numpy(), np.array(labels), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_with_distinct_labels_equals_ntxent(temperature):
    z1, z2 = _views(7, 6, 9)
    ntxent = NTXentLoss(temperature)(z1, z2).item()
    assert SupervisedContrastiveLoss(temperature)(z1, z2, torch.arange(7) * 10).item() == pytest.approx(
        ntxent, rel=1e-12
    )
    assert SupervisedContrastiveLoss(temperature)(z1, z2, None).item() == pytest.approx(ntxent, rel=1e-12)


def test_supcon_without_labels_under_gathering_uses_instance_ids_across_ranks():
    # labels=None must not make crop 0 of rank 0 a positive of crop 0 of rank 1.
    z1, z2 = _views(6, 5, 10)
    loss = SupervisedContrastiveLoss(0.1)
    per_rank = [loss(z1[r * 3 : (r + 1) * 3], z2[r * 3 : (r + 1) * 3], gathered=(z1, z2), rank=r) for r in range(2)]
    assert torch.stack(per_rank).mean().item() == pytest.approx(NTXentLoss(0.1)(z1, z2).item(), rel=1e-12)


# --- (6) devices and dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize("loss_class", [NTXentLoss, SupervisedContrastiveLoss])
def test_float64_stays_float64(loss_class):
    z1, z2 = _views(4, 3, 11, dtype=torch.float64)
    loss = loss_class(0.1)(z1, z2, torch.tensor([0, 1, 0, 1]))
    assert loss.dtype == torch.float64 and loss.device == z1.device


@pytest.mark.parametrize("loss_class", [NTXentLoss, SupervisedContrastiveLoss])
def test_bfloat16_inputs_and_cpu_autocast_compute_in_float32(loss_class):
    z1, z2 = _views(8, 16, 12, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    reference = loss_class(0.1)(z1, z2, labels).item()

    z1_bf16 = z1.to(torch.bfloat16).requires_grad_()
    z2_bf16 = z2.to(torch.bfloat16).requires_grad_()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = loss_class(0.1)(z1_bf16, z2_bf16, labels)
    assert loss.dtype == torch.float32
    # Only the inputs' bfloat16 rounding (~3 significant digits) separates it from float64.
    assert loss.item() == pytest.approx(reference, rel=2e-2)
    loss.backward()
    assert z1_bf16.grad.dtype == torch.bfloat16 and torch.isfinite(z1_bf16.grad.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_stay_on_cuda():
    z1, z2 = (v.cuda().float() for v in _views(8, 16, 13))
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        loss = SupervisedContrastiveLoss(0.1)(z1.half(), z2.half(), torch.arange(8).cuda() % 3)
    assert loss.device.type == "cuda" and loss.dtype == torch.float32


# --- argument checking --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "z1_shape, z2_shape, labels_shape, gathered_shapes, rank, message",
    [
        ((4, 3), (4, 2), (4,), None, 0, "same shape"),
        ((4,), (4,), (4,), None, 0, r"\(B, D\)"),
        ((4, 3), (4, 3), (5,), None, 0, "labels must be"),
        ((4, 3), (4, 3), (4,), ((6, 3), (6, 3), (6,)), 0, "multiple of the local batch"),
        ((4, 3), (4, 3), (4,), ((8, 3), (8, 3), (8,)), 2, "rank=2 outside"),
        ((4, 3), (4, 3), (4,), ((8, 3), (8, 4), (8,)), 0, "gathered views"),
        ((4, 3), (4, 3), (4,), ((8, 3), (8, 3), (7,)), 0, "gathered labels"),
        ((4, 3), (4, 3), (4,), None, 1, "without gathered"),
    ],
)
def test_shape_mismatches_raise_value_error(z1_shape, z2_shape, labels_shape, gathered_shapes, rank, message):
    gathered = None
    if gathered_shapes is not None:
        gathered = (torch.randn(*gathered_shapes[0]), torch.randn(*gathered_shapes[1]), torch.zeros(gathered_shapes[2]))
    for loss in (NTXentLoss(0.1), SupervisedContrastiveLoss(0.1)):
        with pytest.raises(ValueError, match=message):
            loss(
                torch.randn(*z1_shape), torch.randn(*z2_shape), torch.zeros(labels_shape), gathered=gathered, rank=rank
            )


def test_supcon_needs_gathered_labels_when_given_local_labels():
    z1, z2 = _views(2, 3, 14)
    with pytest.raises(ValueError, match="no gathered labels"):
        SupervisedContrastiveLoss(0.1)(z1, z2, torch.tensor([0, 1]), gathered=(z1, z2), rank=0)


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)


# --- the real thing: two gloo processes and gather_with_grad --------------------------------------


def _two_process_worker(rank: int, world: int, workdir: str, z1_all, z2_all, labels_all) -> None:
    import torch.distributed as dist

    from regionmir import distributed

    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world)
    try:
        batch = z1_all.shape[0] // world
        rows = slice(rank * batch, (rank + 1) * batch)
        z1 = z1_all[rows].clone().requires_grad_()
        z2 = z2_all[rows].clone().requires_grad_()
        labels = labels_all[rows]
        assert distributed.rank() == rank and distributed.world_size() == world
        gathered = (distributed.gather_with_grad(z1), distributed.gather_with_grad(z2), distributed.gather(labels))
        loss = SupervisedContrastiveLoss(0.1)(z1, z2, labels, gathered=gathered, rank=distributed.rank())
        loss.backward()
        torch.save((loss.item(), z1.grad, z2.grad), f"{workdir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not hasattr(os, "fork") or not torch.distributed.is_available(), reason="needs fork and torch.distributed (gloo)"
)
def test_gather_with_grad_across_two_gloo_processes(tmp_path, monkeypatch):
    """Two real processes: per-rank gradients are W x the global-batch gradient of their rows
    (gather_with_grad sums the ranks' contributions; DDP's average then divides by W)."""
    import torch.multiprocessing as mp

    world, batch = 2, 3
    z1_all, z2_all = _views(world * batch, 4, 15)
    labels_all = torch.tensor([0, 1, 1, 2, 0, 2])
    z1_full, z2_full = z1_all.clone().requires_grad_(), z2_all.clone().requires_grad_()
    global_loss = SupervisedContrastiveLoss(0.1)(z1_full, z2_full, labels_all)
    global_loss.backward()

    if "GLOO_SOCKET_IFNAME" not in os.environ and os.path.exists("/sys/class/net/lo"):
        # Sandboxes often cannot resolve their own hostname; loopback is all two local ranks need.
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    # fork, not spawn: the children inherit the imported torch instead of importing it again.
    mp.start_processes(
        _two_process_worker,
        args=(world, str(tmp_path), z1_all, z2_all, labels_all),
        nprocs=world,
        start_method="fork",
    )
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world)]

    assert np.mean([loss for loss, _, _ in results]) == pytest.approx(global_loss.item(), rel=1e-10)
    for rank, (_, z1_grad, z2_grad) in enumerate(results):
        rows = slice(rank * batch, (rank + 1) * batch)
        np.testing.assert_allclose(z1_grad.numpy(), (world * z1_full.grad[rows]).numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(z2_grad.numpy(), (world * z2_full.grad[rows]).numpy(), rtol=1e-9, atol=1e-12)
