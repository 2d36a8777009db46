"""Metrics: closed forms and invariances on synthetic features, then rankings on real MNIST.

The real-data tests (marked slow) share one MnistNet, trained once per session
into a temporary cache (about 20 s on one core).
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import gankit.metrics.features as features_mod
from gankit.data import make_dataset
from gankit.errors import GankitError
from gankit.metrics import (
    DESCRIPTIONS,
    METRICS,
    class_coverage,
    classifier_for,
    describe,
    evaluate_images,
    extract,
    fd_features,
    frechet_distance,
    gaussian_stats,
    kid,
    mixture_metrics,
    prdc,
    stack_digits,
    stacked_mnist_modes,
)
from gankit.metrics.classes import kl_divergence
from gankit.metrics.features import load_classifier, train_classifier
from gankit.metrics.kid import polynomial_kernel
from gankit.metrics.mixture import TRUE_HIGH_QUALITY
from gankit.toy import MIXTURES


def _random_orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q


def _random_spd(d: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ------------------------------------------------ Fréchet distance


def test_fd_matches_closed_form_for_diagonal_covariances():
    gen = torch.Generator().manual_seed(0)
    d = 16
    mu1, mu2 = (torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2))
    a, b = (torch.rand(d, generator=gen, dtype=torch.float64) + 0.1 for _ in range(2))
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(
        expected.item(), rel=1e-9
    )
    # a rotation applied to both Gaussians leaves the distance unchanged (non-diagonal case)
    q = _random_orthogonal(d, gen)
    rotated = frechet_distance(q @ mu1, q @ torch.diag(a) @ q.T, q @ mu2, q @ torch.diag(b) @ q.T)
    assert rotated == pytest.approx(expected.item(), rel=1e-8)


def test_fd_matches_eigenvalues_of_covariance_product():
    """tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)): an independent route via the non-symmetric product."""
    gen = torch.Generator().manual_seed(1)
    d = 10
    s1, s2 = _random_spd(d, gen), _random_spd(d, gen)
    mu1, mu2 = (torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2))
    tr_sqrt = torch.linalg.eigvals(s1 @ s2).real.sqrt().sum()
    expected = ((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected.item(), rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        frechet_distance(mu2, s2, mu1, s1), rel=1e-8
    )


def test_fd_is_zero_for_identical_and_finite_for_rank_deficient_sets():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(20, 64, generator=gen)  # N < D: singular covariance
    assert fd_features(x, x) == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(20, 64, generator=gen)
    value = fd_features(x, y)
    assert math.isfinite(value) and value > 0


def test_gaussian_stats_recover_the_sampling_gaussian():
    gen = torch.Generator().manual_seed(3)
    mu, s = torch.tensor([1.0, -2.0]), torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    x = mu + torch.randn(50_000, 2, generator=gen) @ torch.linalg.cholesky(s).T
    m, c = gaussian_stats(x)
    torch.testing.assert_close(m, mu.double(), atol=0.03, rtol=0)  # ~5 standard errors
    torch.testing.assert_close(c, s.double(), atol=0.06, rtol=0)


# ------------------------------------------------ KID


def _naive_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased MMD^2 written as explicit sums over index pairs."""
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_the_unbiased_estimator_written_out():
    gen = torch.Generator().manual_seed(4)
    x, y = (
        torch.randn(12, 5, generator=gen, dtype=torch.float64),
        torch.randn(12, 5, generator=gen, dtype=torch.float64) + 0.3,
    )
    mean, std = kid(x, y, n_subsets=1, subset_size=12)  # one subset = the whole (permuted) sets
    assert mean == pytest.approx(_naive_mmd2(x, y), rel=1e-9)
    assert std == 0.0
    torch.testing.assert_close(polynomial_kernel(x, y)[3, 7], (x[3] @ y[7] / 5 + 1) ** 3)


def test_kid_and_its_spread_match_torch_fidelity(monkeypatch):
    """torch-fidelity's kid_features_to_metric on gankit's subsets: torch-fidelity draws them
    with numpy's RandomState(seed).choice, gankit with torch.randperm, so a stand-in RNG
    hands torch-fidelity the rows gankit draws (the fakes', then the reals', per subset)."""
    from torch_fidelity import metric_kid

    gen = torch.Generator().manual_seed(16)
    fake = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    real = torch.randn(55, 6, generator=gen, dtype=torch.float64) * 1.2 + 0.1
    n_subsets, m = 7, 20  # gankit's default subset size: min(1000, 40 // 2, 55 // 2)
    mean, std = kid(fake, real, n_subsets=n_subsets, generator=torch.Generator().manual_seed(3))

    draws, sizes = torch.Generator().manual_seed(3), [40, 55] * n_subsets
    handed = iter([(n, torch.randperm(n, generator=draws)[:m]) for n in sizes])

    class GankitRows:
        def __init__(self, seed):
            pass

        def choice(self, n, size, replace):
            rows_of, rows = next(handed)
            assert (n, size, replace) == (rows_of, m, False)
            return rows.numpy()

    monkeypatch.setattr(metric_kid.np.random, "RandomState", GankitRows)
    ref = metric_kid.kid_features_to_metric(
        fake, real, kid_subsets=n_subsets, kid_subset_size=m, verbose=False
    )
    assert next(handed, None) is None  # torch-fidelity took every subset gankit drew
    assert mean == pytest.approx(ref[metric_kid.KEY_METRIC_KID_MEAN], rel=1e-9)
    assert std == pytest.approx(ref[metric_kid.KEY_METRIC_KID_STD], rel=1e-9) and std > 0


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(1000, 16, generator=gen), torch.randn(1000, 16, generator=gen)
    same_mean, same_std = kid(x, y, n_subsets=50, generator=torch.Generator().manual_seed(0))
    assert abs(same_mean) < 2 * same_std
    diff_mean, diff_std = kid(x, y + 0.5, n_subsets=50, generator=torch.Generator().manual_seed(0))
    assert diff_mean > 10 * diff_std > 0
    assert diff_mean > 10 * abs(same_mean)


# ------------------------------------------------ precision / recall / density / coverage


def test_prdc_of_a_set_against_itself_is_perfect():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(6))
    r = prdc(x, x)
    assert r["precision"] == r["recall"] == r["coverage"] == 1.0
    assert r["density"] >= 1.0  # every point sits at least in its own ball


def test_prdc_separates_fidelity_from_diversity():
    gen = torch.Generator().manual_seed(7)
    real = torch.randn(1000, 4, generator=gen)
    collapsed = 0.05 * torch.randn(1000, 4, generator=gen)  # all fakes near the real mode
    r = prdc(collapsed, real)
    assert r["precision"] > 0.9 and r["recall"] < 0.1 and r["coverage"] < 0.1
    far = torch.randn(1000, 4, generator=gen) + 100
    assert prdc(far, real) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


@pytest.mark.parametrize("n_fake, n_real", [(120, 80), (60, 150)])
def test_prdc_matches_the_reference_package_on_unequal_sets(n_fake, n_real):
    """clovaai's prdc (Naeem et al.'s code) on the same features; float64 there, float32 here."""
    from prdc import compute_prdc

    gen = torch.Generator().manual_seed(n_fake)
    fake = torch.randn(n_fake, 6, generator=gen) * 0.9 + 0.7
    real = torch.randn(n_real, 6, generator=gen)
    ref = compute_prdc(real.double().numpy(), fake.double().numpy(), nearest_k=5)
    r = prdc(fake, real, k=5)
    # counts agree exactly; 1e-6 allows for float32 means (one count is >= 1 / 750)
    assert r == {key: pytest.approx(float(value), abs=1e-6) for key, value in ref.items()}
    assert 0 < r["precision"] < 1 and 0 < r["recall"] < 1 and 0 < r["coverage"] < 1


def test_prdc_does_not_depend_on_the_batch_size():
    gen = torch.Generator().manual_seed(8)
    x, y = torch.randn(200, 6, generator=gen), torch.randn(150, 6, generator=gen) + 0.2
    assert prdc(x, y, batch=7) == prdc(x, y, batch=4096)


# ------------------------------------------------ class coverage


def test_class_coverage_closed_forms():
    k = 10
    data = torch.full((k,), 1 / k, dtype=torch.float64)
    matched = F.one_hot(torch.arange(1000) % k, k).float()  # (1000, 10), balanced and certain
    r = class_coverage(matched, data)
    assert r == {
        "class_kl": pytest.approx(0.0, abs=1e-12),
        "classes_missing": 0.0,
        "confidence": 1.0,
    }
    single = torch.full((500, k), 0.05)
    single[:, 3] = 0.55  # every sample says "3" with probability 0.55
    r = class_coverage(single, data)
    assert r["class_kl"] == pytest.approx(math.log(k))  # KL(one-hot || uniform) = log K
    assert r["classes_missing"] == k - 1
    assert r["confidence"] == pytest.approx(0.55)


def test_kl_direction_and_infinity():
    p, q = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.25, 0.5])
    assert kl_divergence(p, q) == pytest.approx(math.log(2))  # sum over p's support only
    assert kl_divergence(q, p) == math.inf


# ------------------------------------------------ Stacked MNIST


class _ConstantReader:
    """A 'classifier' for images whose pixels all equal label / 10: reads the label back."""

    name = "constnet"

    def features(self, x):
        return x.flatten(1)[:, :4]

    def predict_proba(self, x):
        label = (x[:, 0, 0, 0] * 10).round().long()
        return F.one_hot(label, 10).float()


def test_stack_digits_labels_match_channels():
    labels = torch.arange(50) % 10
    images = (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 6, 6)  # (50, 1, 6, 6)
    stacked, modes = stack_digits(images, labels, 400, torch.Generator().manual_seed(9))
    assert stacked.shape == (400, 3, 6, 6) and modes.shape == (400,)
    assert modes.min() >= 0 and modes.max() <= 999
    channel_digits = (stacked[:, :, 0, 0] * 10).round().long()  # (400, 3)
    torch.testing.assert_close(
        channel_digits[:, 0] * 100 + channel_digits[:, 1] * 10 + channel_digits[:, 2], modes
    )
    assert (stacked == stacked[:, :, :1, :1]).all()  # each channel is one whole digit image
    assert len(set(modes.tolist())) > 300  # channels are drawn independently, not copied


def test_stacked_mnist_modes_counts_and_kl():
    labels = torch.arange(10)
    images = (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    stacked, _ = stack_digits(images, labels, 20_000, torch.Generator().manual_seed(10))
    r = stacked_mnist_modes(stacked, _ConstantReader())
    assert r["stacked_modes"] == 1000  # 20,000 draws miss a mode with probability ~e^-20
    assert 0 < r["stacked_kl"] < 2 * 999 / (2 * 20_000)  # about (K - 1) / 2N for a multinomial
    one_mode = stacked[:1].expand(500, -1, -1, -1)
    r = stacked_mnist_modes(one_mode, _ConstantReader())
    assert r["stacked_modes"] == 1 and r["stacked_kl"] == pytest.approx(math.log(1000))


# ------------------------------------------------ 2D mixtures


@pytest.mark.parametrize("name", list(MIXTURES))
def test_mixture_metrics_on_true_samples(name):
    target = MIXTURES[name]()
    k, n = len(target.modes), 2500
    r = mixture_metrics(target.sample(n, torch.Generator().manual_seed(11)), target)
    assert r["modes"] == k
    binomial_sd = math.sqrt(TRUE_HIGH_QUALITY * (1 - TRUE_HIGH_QUALITY) / n)
    assert abs(r["high_quality"] / 100 - TRUE_HIGH_QUALITY) < 4 * binomial_sd
    assert 0 <= r["mode_kl"] < 5 * (k - 1) / (2 * n)  # multinomial noise only


@pytest.mark.parametrize("name", list(MIXTURES))
def test_mixture_metrics_on_collapsed_samples(name):
    target = MIXTURES[name]()
    k = len(target.modes)
    half = target.modes[: k // 2].repeat(10, 1)  # exactly on half of the modes, evenly
    r = mixture_metrics(half, target)
    assert r == {
        "modes": k // 2,
        "high_quality": 100.0,
        "mode_kl": pytest.approx(math.log(k / (k // 2))),
    }
    one = target.modes[:1].repeat(100, 1)
    assert mixture_metrics(one, target)["mode_kl"] == pytest.approx(math.log(k))
    nowhere = torch.full((100, 2), 50.0)
    assert mixture_metrics(nowhere, target) == {
        "modes": 0.0,
        "high_quality": 0.0,
        "mode_kl": pytest.approx(math.log(k)),
    }


# ------------------------------------------------ registry, evaluate_images, errors


class _TinyExtractor:
    """Fixed random projection of pooled pixels, and a softmax of it: no training."""

    name = "tinynet"

    def __init__(self):
        self.proj = torch.randn(16, 12, generator=torch.Generator().manual_seed(12))

    def features(self, x):
        return F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.proj  # (N, 12)

    def predict_proba(self, x):
        return self.features(x)[:, :10].softmax(1)  # (N, 10)


@pytest.mark.parametrize("metric", list(METRICS))
def test_every_metric_runs_and_is_described(metric):
    gen = torch.Generator().manual_seed(13)
    fake, real = (
        torch.rand(60, 1, 8, 8, generator=gen) * 2 - 1,
        torch.rand(50, 1, 8, 8, generator=gen) * 2 - 1,
    )
    r = evaluate_images(fake, real, _TinyExtractor(), metrics=(metric,))
    assert r and all(isinstance(v, float) and math.isfinite(v) for v in r.values())
    assert all(describe(key) for key in r), [key for key in r if not describe(key)]
    assert r == evaluate_images(
        fake, extract(real, _TinyExtractor()), _TinyExtractor(), metrics=(metric,)
    )


def test_evaluate_images_keys_and_refusals():
    gen = torch.Generator().manual_seed(14)
    fake, real = torch.rand(40, 1, 8, 8, generator=gen), torch.rand(40, 1, 8, 8, generator=gen)
    r = evaluate_images(fake, real, _TinyExtractor(), n=30)
    assert {"fd_tinynet", "kid_tinynet", "kid_tinynet_std", "precision", "class_kl"} <= set(r)
    assert describe("fd_mnistnet") == DESCRIPTIONS["fd_{net}"].format(net="mnistnet")
    with pytest.raises(GankitError, match="choose from"):
        evaluate_images(fake, real, _TinyExtractor(), metrics=("fid",))
    with pytest.raises(GankitError, match="real ones are"):
        evaluate_images(fake, real[:, :, :4], _TinyExtractor())


# ------------------------------------------------ the MnistNet classifier (real data)


@pytest.fixture(scope="session")
def mnist():
    return make_dataset("mnist"), make_dataset("mnist", split="test")


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("classifiers")


@pytest.fixture(scope="session")
def clf(mnist, classifier_cache):
    train, test = mnist
    return classifier_for(train, test, cache=classifier_cache, log=None)


def _small(ds, n):
    from dataclasses import replace

    return replace(ds, images=ds.images[:n], labels=ds.labels[:n])


@pytest.mark.slow
def test_classifier_accuracy(clf):
    assert clf.name == "mnistnet"
    assert clf.accuracy >= 0.95
    assert clf.features(torch.zeros(3, 1, 28, 28)).shape == (3, features_mod.FEATURE_DIM)
    torch.testing.assert_close(clf.predict_proba(torch.zeros(3, 1, 28, 28)).sum(1), torch.ones(3))


@pytest.mark.slow
def test_classifier_training_is_deterministic(mnist):
    train, test = _small(mnist[0], 512), _small(mnist[1], 100)
    a = train_classifier(train, test, seed=3, epochs=1).net.state_dict()
    b = train_classifier(train, test, seed=3, epochs=1).net.state_dict()
    c = train_classifier(train, test, seed=4, epochs=1).net.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


@pytest.mark.slow
def test_classifier_cache_is_reused_without_pickle(mnist, clf, classifier_cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("must not be called")

    monkeypatch.setattr(features_mod, "train_classifier", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    again = classifier_for(*mnist, cache=classifier_cache, log=None)
    assert again.accuracy == clf.accuracy
    for key, value in clf.net.state_dict().items():
        torch.testing.assert_close(again.net.state_dict()[key], value, rtol=0, atol=0)
    (path,) = classifier_cache.glob("*.safetensors")
    assert load_classifier(path).meta["test_fingerprint"] == again.meta["test_fingerprint"]


@pytest.mark.slow
def test_classifier_cache_retrains_on_other_seed_or_corrupt_file(mnist, clf, tmp_path, monkeypatch):
    calls = []

    def fake_train(train, test, seed=0, device="cpu"):
        calls.append(seed)
        return clf.__class__(
            net=clf.net, name=clf.name, accuracy=0.5, meta={**clf.meta, "seed": seed}
        )

    monkeypatch.setattr(features_mod, "train_classifier", fake_train)
    first = classifier_for(*mnist, seed=7, cache=tmp_path, log=None)
    assert calls == [7] and first.accuracy == 0.5
    classifier_for(*mnist, seed=7, cache=tmp_path, log=None)
    assert calls == [7]  # cached
    classifier_for(*mnist, seed=8, cache=tmp_path, log=None)
    assert calls == [7, 8]  # another seed: retrained over the same file
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(b"not a safetensors file")
    classifier_for(*mnist, seed=8, cache=tmp_path, log=None)
    assert calls == [7, 8, 8]  # a corrupt cache is retrained, not an error


# ------------------------------------------------ metrics on real MNIST


def _blur(x: torch.Tensor) -> torch.Tensor:
    k1 = torch.exp(-((torch.arange(7) - 3.0) ** 2) / (2 * 1.5**2))
    k = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
    return F.conv2d(F.pad(x, [3] * 4, mode="replicate"), k.view(1, 1, 7, 7))


@pytest.fixture(scope="module")
def real_scores(mnist, clf):
    """Scores of several sample sets against the held-out split, plus a same-distribution floor."""
    train, test = mnist
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(train), generator=gen)
    a, b = train.images[perm[:1000]], train.images[perm[1000:2000]]
    real = extract(test.images, clf)
    sets = {
        "train": a,
        "blur": _blur(a),
        "noise": (a + 0.5 * torch.randn(a.shape, generator=gen)).clamp(-1, 1),
        "single": train.images[train.labels == 0],
        "uniform": torch.rand(1000, 1, 28, 28, generator=gen) * 2 - 1,
    }
    scores = {name: evaluate_images(x, real, clf) for name, x in sets.items()}
    floor = fd_features(extract(a, clf).feats, extract(b, clf).feats)  # two training halves
    return scores, floor


@pytest.mark.slow
def test_real_fd_is_near_its_floor_and_far_below_noise(real_scores):
    scores, floor = real_scores
    fd = scores["train"]["fd_mnistnet"]
    assert fd < 3 * floor  # held-out vs training is as close as two training subsets
    assert fd < 0.01 * scores["uniform"]["fd_mnistnet"]


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["blur", "noise", "single", "uniform"])
def test_damaged_sets_rank_worse_than_real(real_scores, damaged):
    scores, _ = real_scores
    real, bad = scores["train"], scores[damaged]
    assert bad["fd_mnistnet"] > 10 * real["fd_mnistnet"]
    assert bad["kid_mnistnet"] > real["kid_mnistnet"] + 3 * bad["kid_mnistnet_std"]
    assert bad["recall"] < real["recall"] and bad["coverage"] < real["coverage"]


@pytest.mark.slow
def test_real_samples_cover_every_class(real_scores):
    r = real_scores[0]["train"]
    assert r["classes_missing"] == 0 and r["class_kl"] < 0.05
    assert r["precision"] > 0.9 and r["recall"] > 0.9 and r["coverage"] > 0.9
    assert r["confidence"] > 0.9


@pytest.mark.slow
def test_single_class_has_low_recall_and_high_class_kl(real_scores):
    r = real_scores[0]["single"]
    assert r["recall"] < 0.3 and r["coverage"] < 0.3  # one class is a tenth of the data
    assert r["class_kl"] > 0.8 * math.log(10)  # about log 10: all mass on one of 10 classes
    assert r["classes_missing"] == 9


@pytest.mark.slow
def test_stacked_real_digits_score_like_their_true_modes(mnist, clf):
    test = mnist[1]
    stacked, modes = stack_digits(test.images, test.labels, 6000, torch.Generator().manual_seed(15))
    r = stacked_mnist_modes(stacked, clf)
    true_counts = torch.bincount(modes, minlength=1000).double()
    true_p = true_counts[true_counts > 0] / 6000
    true_kl = (true_p * (true_p * 1000).log()).sum().item()
    assert abs(r["stacked_modes"] - (true_counts > 0).sum().item()) <= 10
    assert r["stacked_kl"] == pytest.approx(true_kl, abs=0.05)
