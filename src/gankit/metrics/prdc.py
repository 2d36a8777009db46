"""Precision, recall, density and coverage from k-nearest-neighbour balls in feature space.

Improved precision and recall (Kynkäänniemi et al., 2019) estimate each set's
support as the union of balls around its points, each ball's radius being the
distance to that point's k-th nearest neighbour in its own set:

    precision = share of fake points inside the real support     (fidelity)
    recall    = share of real points inside the fake support     (diversity)

Density and coverage (Naeem et al., 2020) fix precision's sensitivity to real
outliers and recall's to fake outliers:

    density   = (1 / kM) sum over fake j of the number of real balls holding j
                (about 1 when fake matches real; above 1 when fakes crowd dense regions)
    coverage  = share of real points whose own ball holds at least one fake point

All four compare sets of equal size best; `evaluate_images` passes equal counts.
"""

from __future__ import annotations

import torch

K = 5  # neighbours, as in both papers


def _pairwise_min_and_count(
    query: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row: distance to its nearest ref row, and how many ref balls contain it."""
    nearest, inside = [], []
    for q in query.split(batch):
        d = torch.cdist(q, ref)  # (b, M)
        nearest.append(d.min(1).values)
        inside.append((d <= ref_radii[None, :]).sum(1))
    return torch.cat(nearest), torch.cat(inside)  # (Nq,), (Nq,)


def knn_radii(x: torch.Tensor, k: int = K, batch: int = 1024) -> torch.Tensor:
    """(N, D) -> (N,) distance from each row to its k-th nearest other row."""
    radii = []
    for q in x.split(batch):
        d = torch.cdist(q, x)  # (b, N); each row's own distance 0 is among the k + 1 smallest
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def prdc(fake: torch.Tensor, real: torch.Tensor, k: int = K, batch: int = 1024) -> dict[str, float]:
    """Precision, recall, density and coverage of (N, D) fake against (M, D) real features."""
    fake = fake.detach().to("cpu", torch.float32)
    real = real.detach().to("cpu", torch.float32)
    if min(len(fake), len(real)) <= k:
        raise ValueError(
            f"need more than k={k} points in each set, got {len(fake)} and {len(real)}"
        )
    real_radii, fake_radii = knn_radii(real, k, batch), knn_radii(fake, k, batch)  # (M,), (N,)
    # fake -> real: is each fake inside some real ball, and how many?
    _, fake_in_real = _pairwise_min_and_count(fake, real, real_radii, batch)  # (N,)
    # real -> fake: is each real inside some fake ball; its nearest fake for coverage
    real_to_fake, real_in_fake = _pairwise_min_and_count(real, fake, fake_radii, batch)  # (M,)
    return {
        "precision": (fake_in_real > 0).float().mean().item(),
        "recall": (real_in_fake > 0).float().mean().item(),
        "density": fake_in_real.float().sum().item() / (k * len(fake)),
        "coverage": (real_to_fake <= real_radii).float().mean().item(),
    }
