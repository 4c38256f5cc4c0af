"""Contrastive losses for region (ROI) pretraining: SimCLR's NT-Xent and supervised contrastive.

Both losses take the projections of two augmented views of the same B ROI crops, ``z1`` and
``z2`` of shape (B, D), and L2-normalise them inside. They are plain ``nn.Module``s that follow
their inputs' device and never talk to ``torch.distributed``: for negatives from every worker the
*caller* gathers the projections with :func:`regionmir.distributed.gather_with_grad` and passes

    loss(z1, z2, labels, gathered=(Z1_all, Z2_all, labels_all), rank=rank())

where the (W*B, D) tensors hold this rank's rows at ``rank*B:(rank+1)*B``. Each rank then scores
its own 2B anchors against all 2WB views; the mean of the per-rank losses equals the loss on the
global batch, and so does its gradient (tested in ``tests/test_contrastive_losses.py``).

Precision: the similarity logits are computed in float32 with autocast turned off (float64 inputs
stay float64), because ``exp(s / 0.1)`` over thousands of candidates is where half precision
loses the ranking. The returned loss is a 0-dim tensor of that compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NTXentLoss", "SupervisedContrastiveLoss"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32/float16/bfloat16 are promoted to float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_views(z1: Tensor, z2: Tensor, labels: Tensor | None) -> None:
    if z1.ndim != 2 or z2.ndim != 2:
        raise ValueError(f"z1 and z2 must be (B, D); got shapes {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape != z2.shape:
        raise ValueError(f"the two views must have the same shape; got z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)}")
    if z1.shape[0] == 0:
        raise ValueError("empty batch: z1 and z2 have no rows")
    if labels is not None and tuple(labels.shape) != (z1.shape[0],):
        raise ValueError(f"labels must be (B,) = ({z1.shape[0]},); got {tuple(labels.shape)}")


def _unpack_gathered(
    z1: Tensor,
    z2: Tensor,
    labels: Tensor | None,
    gathered: Sequence[Tensor] | None,
    rank: int,
) -> tuple[Tensor, Tensor, Tensor | None, int, int]:
    """Candidate views (Z1_all, Z2_all, labels_all) and (world, rank), validated.

    Without ``gathered`` the candidates are the local views themselves (world 1, rank 0).
    """
    batch = z1.shape[0]
    if gathered is None:
        if rank != 0:
            raise ValueError(f"rank={rank} given without gathered tensors; a single process is rank 0")
        return z1, z2, labels, 1, 0
    if len(gathered) not in (2, 3):
        raise ValueError(
            f"gathered must be (Z1_all, Z2_all) or (Z1_all, Z2_all, labels_all); got {len(gathered)} items"
        )
    all_z1, all_z2 = gathered[0], gathered[1]
    all_labels = gathered[2] if len(gathered) == 3 else None
    if all_z1.ndim != 2 or all_z1.shape != all_z2.shape:
        raise ValueError(f"gathered views must both be (W*B, D); got {tuple(all_z1.shape)} and {tuple(all_z2.shape)}")
    if all_z1.shape[1] != z1.shape[1]:
        raise ValueError(f"gathered views have dimension {all_z1.shape[1]}, local views {z1.shape[1]}")
    if all_z1.shape[0] % batch != 0:
        raise ValueError(
            f"gathered batch {all_z1.shape[0]} is not a multiple of the local batch {batch}; "
            "every rank must contribute the same number of rows (drop_last=True)"
        )
    world = all_z1.shape[0] // batch
    if not 0 <= rank < world:
        raise ValueError(f"rank={rank} outside [0, {world}) for a gathered batch of {world} x {batch}")
    if all_labels is not None and tuple(all_labels.shape) != (all_z1.shape[0],):
        raise ValueError(f"gathered labels must be ({all_z1.shape[0]},); got {tuple(all_labels.shape)}")
    return all_z1, all_z2, all_labels, world, rank


def _similarity_logits(
    z1: Tensor, z2: Tensor, all_z1: Tensor, all_z2: Tensor, temperature: float, world: int, rank: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine-similarity logits of the 2B local anchors against the 2WB candidate views.

    Returns:
        logits: (2B, 2WB), ``cos / temperature`` in the compute dtype, autocast off.
        self_column: (2B,) column of each anchor's own view (to be excluded).
        positive_column: (2B,) column of each anchor's other view.

    Row order of the anchors is [z1; z2]; column order of the candidates is [Z1_all; Z2_all].
    """
    batch = z1.shape[0]
    dtype = _compute_dtype(z1.dtype)
    # Autocast would cast the matmul back to half precision; the logits must stay in `dtype`.
    with torch.autocast(device_type=z1.device.type, enabled=False):
        anchors = F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)
        candidates = F.normalize(torch.cat([all_z1, all_z2]).to(dtype), dim=1)
        logits = anchors @ candidates.T / temperature

    local = torch.arange(batch, device=z1.device) + rank * batch  # this rank's rows in Z_all
    offset = world * batch  # where the Z2_all block starts among the candidates
    self_column = torch.cat([local, local + offset])
    positive_column = torch.cat([local + offset, local])
    return logits, self_column, positive_column


class _TemperatureScaledLoss(nn.Module):
    """Shared by both losses: the temperature τ that divides the cosine similarities, and one call.

    Shapes:
        z1, z2: (B, D) projections of view 1 and view 2 (any float dtype; normalised inside).
        labels: (B,) integer anatomy ids, or None (see each loss for what it does with them).
        gathered: optional (Z1_all, Z2_all[, labels_all]) with (W*B, D) views from every rank.
        rank: this rank's position in ``gathered``.
        returns: scalar, mean over this rank's 2B anchors.
    """

    #: Whether the loss reads the labels (NT-Xent accepts and ignores them: one call signature).
    uses_labels = False

    def __init__(self, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(
        self,
        z1: Tensor,
        z2: Tensor,
        labels: Tensor | None = None,
        *,
        gathered: Sequence[Tensor] | None = None,
        rank: int = 0,
    ) -> Tensor:
        _check_views(z1, z2, labels)
        labels = labels if self.uses_labels else None
        all_z1, all_z2, all_labels, world, rank = _unpack_gathered(z1, z2, labels, gathered, rank)
        return self._loss(z1, z2, labels, all_z1, all_z2, all_labels, world, rank)

    def _loss(self, z1, z2, labels, all_z1, all_z2, all_labels, world: int, rank: int) -> Tensor:
        raise NotImplementedError


class NTXentLoss(_TemperatureScaledLoss):
    """SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020, arXiv 2002.05709).

    Implements: "Given a set {x̃_k} including a positive pair of examples x̃_i and x̃_j, the
    contrastive prediction task aims to identify x̃_j in {x̃_k}_{k≠i} for a given x̃_i", with
    ``l(i, j) = -log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ)`` averaged over both
    orderings of every pair. Here the two views of one ROI crop are the positive pair and the
    other 2N-2 views of the (global) batch of N crops are the negatives, whatever their anatomy.

    Args:
        temperature: τ; 0.1 is the usual choice with ℓ2-normalised projections.

    Labels are ignored (accepted so that both losses share one call signature).
    """

    def _loss(self, z1, z2, labels, all_z1, all_z2, all_labels, world: int, rank: int) -> Tensor:
        logits, self_column, positive_column = _similarity_logits(z1, z2, all_z1, all_z2, self.temperature, world, rank)
        # -inf drops an anchor's own view from the softmax denominator (the k ≠ i of the paper).
        logits = logits.scatter(1, self_column[:, None], float("-inf"))
        return F.cross_entropy(logits, positive_column)


class SupervisedContrastiveLoss(_TemperatureScaledLoss):
    """Supervised contrastive loss, the "L_out" form (Khosla et al. 2020, arXiv 2004.11362, eq. 2).

    Implements ``L_out = Σ_i -1/|P(i)| Σ_{p∈P(i)} log exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ)``,
    where "P(i) ≡ {p ∈ A(i) : ỹ_p = ỹ_i} is the set of indices of all positives in the multiviewed
    batch distinct from i" and A(i) is every view except i. For ROIs the label is the anatomy, so
    all views of the same anatomy (across crops and across ranks) pull together. With two views
    every anchor has at least its own other view in P(i), so |P(i)| ≥ 1 always.

    The sum over anchors is averaged (mean over this rank's 2B anchors), and there is no
    ``τ / base_τ`` rescaling as in the authors' reference code, so that with all-distinct labels
    (or ``labels=None``) this loss equals :class:`NTXentLoss` exactly.

    Args:
        temperature: τ; the paper uses 0.1.

    Labels: (B,) integer anatomy ids; None means every crop is its own class (= NT-Xent). With
    ``gathered``, ``labels_all`` (W*B,) is required when ``labels`` is given.
    """

    uses_labels = True

    def _loss(self, z1, z2, labels, all_z1, all_z2, all_labels, world: int, rank: int) -> Tensor:
        batch = z1.shape[0]
        if labels is None:
            if all_labels is not None:
                raise ValueError("gathered labels given but local labels are None")
            # Every crop is its own class: ids that are unique across ranks.
            labels = torch.arange(batch, device=z1.device) + rank * batch
            all_labels = torch.arange(world * batch, device=z1.device)
        elif all_labels is None:
            raise ValueError(
                "labels given with gathered views but no gathered labels: pass (Z1_all, Z2_all, labels_all)"
            )

        logits, self_column, _ = _similarity_logits(z1, z2, all_z1, all_z2, self.temperature, world, rank)
        is_self = torch.zeros_like(logits, dtype=torch.bool).scatter(1, self_column[:, None], True)

        anchor_labels = torch.cat([labels, labels]).to(z1.device)
        candidate_labels = torch.cat([all_labels, all_labels]).to(z1.device)
        is_positive = (anchor_labels[:, None] == candidate_labels[None, :]) & ~is_self

        # log of the softmax over A(i): the own view is excluded from the denominator only, so
        # log_prob stays finite everywhere and masking it with `where` cannot produce 0 * -inf.
        log_denominator = torch.logsumexp(logits.masked_fill(is_self, float("-inf")), dim=1, keepdim=True)
        log_prob = logits - log_denominator
        positives_per_anchor = is_positive.sum(dim=1)  # >= 1: the anchor's other view
        mean_log_prob_positive = torch.where(is_positive, log_prob, 0.0).sum(dim=1) / positives_per_anchor
        return -mean_log_prob_positive.mean()
