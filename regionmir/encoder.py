"""The region encoder: a one-channel ResNet with three heads, and its presets.

One network serves the three stages of the method (Lee et al. 2023):

* **pretraining** — ``backbone → projection_head`` (SimCLR's ``g(·)``: Linear-BN-ReLU-Linear); the
  contrastive loss reads ``projection``. As in SimCLR, the head is discarded afterwards: its
  output is trained to be invariant to the augmentations, which throws information away.
* **fine-tuning** — ``backbone → embedding_layer → classification_head``; cross-entropy on
  ``logits`` over the 36 anatomies. The paper's point is that this gives an *anatomy-specific
  latent space*.
* **retrieval** — :meth:`RegionEncoder.embed` = L2-normalised ``embedding_layer(features)``,
  ``(B, embedding_dim)`` float32. This is the fine-tuned latent space the classifier reads, so
  cosine neighbours share an anatomy first and appearance second; a small dimension
  (128 by default) keeps the index compact. Before fine-tuning ``embedding_layer`` is a random
  linear map of the pretrained features (distance-preserving in expectation), so an encoder that
  was only pretrained can still be indexed, just less well.

Inputs are ``(B, in_channels, H, W)`` in the intensity convention ([0, 1], bright = dense). The
model normalises them itself — ``(x - INPUT_MEAN) / INPUT_STD`` with 0.5 / 0.25, which maps [0, 1]
to [-2, 2], roughly zero-mean unit-variance for chest films — so no caller ever does.

Presets are small JSON files in ``regionmir/presets/`` (``list_presets()``, ``load_preset(name)``).
The backbones are :mod:`regionmir.resnet`'s: torchvision's ResNet architecture with its parameter
names, so checkpoints interchange with torchvision-built ones, without importing torchvision (whose
import drags in torch._dynamo, sympy and triton: seconds of start-up for every process that holds
the encoder). No pretrained weights are ever downloaded (``weights=None``): ImageNet stems expect
three colour channels and natural-image statistics, and hospitals run air-gapped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from regionmir import resnet

#: Input normalisation applied inside the model (intensity convention → network range).
INPUT_MEAN = 0.5
INPUT_STD = 0.25

#: Crops at or below this size skip the stem's max-pool (see :class:`RegionEncoder`).
MAXPOOL_MIN_CROP = 128


#: Supported backbones → :mod:`regionmir.resnet` constructor (torchvision's layouts and parameter
#: names; ``resnet10`` is ResNet-18 halved in depth and may be narrower). All take ``weights=None``.
BACKBONES: dict[str, Callable[..., resnet.ResNet]] = {
    "resnet10": resnet.resnet10,
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
}

#: Names of the outputs :meth:`RegionEncoder.forward` can compute.
HEADS = ("projection", "embedding", "logits")


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild a :class:`RegionEncoder`; checkpoints store ``to_dict()``.

    ``backbone``: one of :data:`BACKBONES`. ``embedding_dim``: size of both the contrastive
    projection and the retrieval embedding. ``projection_hidden_dim``: hidden width of the
    projection MLP. ``num_classes``: anatomy classes (36 = the full vocabulary). ``in_channels``:
    1 for radiographs. ``crop_size``: the side of the crops it is trained on; it also decides the
    stem (crops ≤ 128 px keep more resolution, see :class:`RegionEncoder`). ``width``: channels
    of the first stage (64 = torchvision's layout; only ``resnet10`` can be narrower).
    """

    backbone: str = "resnet18"
    embedding_dim: int = 128
    projection_hidden_dim: int = 512
    num_classes: int = 36
    in_channels: int = 1
    crop_size: int = 96
    width: int = 64

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
        if self.width != 64 and self.backbone != "resnet10":
            raise ValueError(
                f"EncoderConfig.width: only resnet10 can be narrower than 64, "
                f"got width {self.width} for {self.backbone}"
            )
        for name in ("embedding_dim", "projection_hidden_dim", "num_classes", "in_channels", "crop_size", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EncoderConfig.{name} must be a positive int, got {value!r}")

    @property
    def keeps_stem_maxpool(self) -> bool:
        return self.crop_size > MAXPOOL_MIN_CROP

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise so a foreign checkpoint is never half-read."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields: {sorted(unknown)}")
        return cls(**data)


class ProjectionHead(nn.Module):
    """SimCLR projection head: Linear → BatchNorm → ReLU → Linear, ``(B, in) → (B, out)``.

    "We use a MLP with one hidden layer to obtain z_i = g(h_i) = W(2) σ(W(1) h_i)" (Chen et al.
    2020, SimCLR); the BatchNorm follows SimCLR v2 / lightly's ``SimCLRProjectionHead``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class RegionEncoder(nn.Module):
    """A ResNet (:mod:`regionmir.resnet`, torchvision's parameter names, ``weights=None``) on
    one-channel ROI crops, with three heads.

    Stem: ``conv1`` is a 7×7 stride-2 convolution with ``in_channels`` inputs. We keep
    the 7×7/2 conv (rather than CIFAR's 3×3/1) because crops are 64–96 px of a film whose
    structures — ribs, vessels, the diaphragm edge — span many pixels; but for crops ≤ 128 px we
    drop the stem's max-pool, so a 96 px crop ends in a 6×6 map instead of 3×3 (64 px: 4×4
    instead of 2×2). A 2×2 map leaves almost no room to tell a costophrenic angle's sharp corner
    from a blunted one; the price is 4× the FLOPs of the stock net at the same input size (a
    96 px crop then costs what a 192 px image costs the stock net).

    Attributes:
        backbone: the ResNet, ``fc`` removed: ``(B, C, H, W) → (B, feature_dim)`` (512 or 2048).
        projection_head: :class:`ProjectionHead` ``feature_dim → embedding_dim`` (pretraining).
        embedding_layer: Linear ``feature_dim → embedding_dim`` (the retrieval space).
        classification_head: Linear ``embedding_dim → num_classes`` (fine-tuning).
    """

    def __init__(self, config: EncoderConfig | None = None):
        super().__init__()
        self.config = config if config is not None else EncoderConfig()
        extra = {"width": self.config.width} if self.config.backbone == "resnet10" else {}
        backbone = BACKBONES[self.config.backbone](
            weights=None, in_channels=self.config.in_channels, num_classes=None, **extra
        )
        if not self.config.keeps_stem_maxpool:
            backbone.maxpool = nn.Identity()
        self.feature_dim = backbone.feature_dim
        self.backbone = backbone
        self.projection_head = ProjectionHead(
            self.feature_dim, self.config.projection_hidden_dim, self.config.embedding_dim
        )
        self.embedding_layer = nn.Linear(self.feature_dim, self.config.embedding_dim)
        self.classification_head = nn.Linear(self.config.embedding_dim, self.config.num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"RegionEncoder expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"RegionEncoder expects float input in [0, 1], got {x.dtype}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(B, feature_dim)`` of crops ``(B, in_channels, H, W)`` in [0, 1]."""
        self._check_input(x)
        return self.backbone((x - INPUT_MEAN) / INPUT_STD)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval embedding: L2-normalised ``(B, embedding_dim)`` float32.

        Call in ``eval()`` mode for indexing and queries (BatchNorm statistics).
        """
        return self._normalised_embedding(self.embedding_layer(self.features(x)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Anatomy logits ``(B, num_classes)``."""
        return self.classification_head(self.embedding_layer(self.features(x)))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Contrastive projection ``(B, embedding_dim)``, not normalised (the loss does that)."""
        return self.projection_head(self.features(x))

    def forward(self, x: torch.Tensor, heads: Iterable[str] = HEADS) -> dict[str, torch.Tensor]:
        """Run the backbone once and the requested heads.

        Returns a dict with ``"features"`` ``(B, feature_dim)`` and, per requested head,
        ``"projection"`` ``(B, embedding_dim)``, ``"embedding"`` (L2-normalised, float32,
        ``(B, embedding_dim)``), ``"logits"`` ``(B, num_classes)``.

        Ask only for what the loss uses: under DistributedDataParallel a head that runs without
        receiving gradients makes the next reduction fail (pretraining: ``("projection",)``;
        fine-tuning: ``("logits",)``, or ``("embedding", "logits")``). In ``train()`` mode the
        projection head's BatchNorm needs a batch of at least 2.
        """
        heads = tuple(heads)
        unknown = set(heads) - set(HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; choose from {HEADS}")
        features = self.features(x)
        out: dict[str, torch.Tensor] = {"features": features}
        if "projection" in heads:
            out["projection"] = self.projection_head(features)
        if "embedding" in heads or "logits" in heads:
            embedding = self.embedding_layer(features)
            if "embedding" in heads:
                out["embedding"] = self._normalised_embedding(embedding)
            if "logits" in heads:
                out["logits"] = self.classification_head(embedding)
        return out

    @staticmethod
    def _normalised_embedding(embedding: torch.Tensor) -> torch.Tensor:
        # float32 before normalising: under bf16 autocast the norm would be off by ~1e-2.
        return F.normalize(embedding.float(), dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --- presets ---------------------------------------------------------------------------------


def _preset_dir():
    return resources.files(__package__).joinpath("presets")


def list_presets() -> list[str]:
    """Names of the bundled encoder presets (``regionmir/presets/*.json``), sorted."""
    return sorted(entry.name[: -len(".json")] for entry in _preset_dir().iterdir() if entry.name.endswith(".json"))


def load_preset(name: str) -> EncoderConfig:
    """The :class:`EncoderConfig` of a bundled preset; an unknown name raises ``ValueError``."""
    available = list_presets()
    if name not in available:
        raise ValueError(f"unknown encoder preset {name!r}; available: {', '.join(available)}")
    data = json.loads(_preset_dir().joinpath(f"{name}.json").read_text(encoding="utf-8"))
    return EncoderConfig.from_dict(data)
