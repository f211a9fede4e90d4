"""PatchCore/PaDiM building blocks and the anomaly metrics, on tiny tensors (seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from edgetl_builtins.anomaly.host.search import greedy_coreset, k_nearest, nearest
from train_fixtures import one_torch_thread  # noqa: F401

from edgetl.anomaly_metrics import anomaly_document, f1_threshold, percentile_threshold, pro_score


def test_matmul_nearest_neighbour_equals_brute_force_across_chunks():
    gen = torch.Generator().manual_seed(0)
    q, bank = torch.randn(50, 12, generator=gen), torch.randn(333, 12, generator=gen)
    brute = ((q[:, None, :] - bank[None, :, :]) ** 2).sum(-1)
    want_d, want_i = brute.min(dim=1)
    for chunk in (7, 100, 4096):  # several chunks, a ragged last one, one chunk
        d, i = nearest(q, bank, chunk=chunk)
        assert torch.equal(i, want_i)
        assert torch.allclose(d, want_d, atol=1e-4)


def test_k_nearest_lists_the_row_itself_first():
    bank = torch.randn(40, 5, generator=torch.Generator().manual_seed(1))
    idx = k_nearest(bank, bank, 4, chunk=16)
    assert idx.shape == (40, 4)
    assert torch.equal(idx[:, 0], torch.arange(40))


def test_coreset_has_the_asked_size_and_is_deterministic():
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(2))
    a = greedy_coreset(x, 25, seed=7, projection_dim=8)
    assert a.shape == (25,) and len(set(a.tolist())) == 25
    assert torch.equal(a, greedy_coreset(x, 25, seed=7, projection_dim=8))
    assert not torch.equal(a, greedy_coreset(x, 25, seed=8, projection_dim=8))
    assert len(greedy_coreset(x, 10_000, seed=0)) == 500  # capped at the number of rows


def test_coreset_reports_rows_chosen_about_every_tenth_and_the_same_subset():
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(2))
    seen = []
    with_progress = greedy_coreset(x, 95, seed=7, projection_dim=8, progress=lambda done, total: seen.append((done, total)))
    assert torch.equal(with_progress, greedy_coreset(x, 95, seed=7, projection_dim=8))
    assert seen[0] == (1, 95) and seen[-1] == (95, 95)
    assert [d for d, _ in seen] == [1, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 95]  # every 9 rows: throttled


def test_coreset_covers_the_space_better_than_random_rows():
    """Greedy k-center: the largest distance from any row to the subset beats a random subset's."""
    x = torch.randn(800, 6, generator=torch.Generator().manual_seed(3))
    core = greedy_coreset(x, 40, seed=0, projection_dim=0)
    rand = torch.randperm(800, generator=torch.Generator().manual_seed(0))[:40]
    radius = nearest(x, x[core])[0].max()
    assert radius < nearest(x, x[rand])[0].max()


def test_f1_threshold_separates_and_percentile_uses_good_scores():
    y = np.array([0, 0, 0, 0, 1, 1, 1], dtype=bool)
    s = np.array([0.1, 0.2, 0.3, 0.35, 0.5, 0.9, 0.8])
    t = f1_threshold(y, s)
    assert 0.35 < t <= 0.5 and ((s >= t) == y).all()
    assert percentile_threshold(s[~y], 100) == pytest.approx(0.35)
    with pytest.raises(ValueError):
        f1_threshold(np.zeros(3, dtype=bool), s[:3])


def test_pro_is_one_for_a_perfect_map_and_lower_for_a_shifted_one():
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:10, 4:10] = True
    mask[20:30, 20:22] = True  # a second, thin region
    perfect = mask.astype(np.float32)
    assert pro_score([perfect], [mask]) == pytest.approx(1.0)
    shifted = np.roll(perfect, 3, axis=1)
    assert pro_score([shifted], [mask]) < 0.9
    assert pro_score([perfect], [np.zeros_like(mask)]) is None


def test_anomaly_document_carries_image_and_pixel_metrics():
    rng = np.random.default_rng(0)
    masks = [None, np.zeros((16, 16), bool), np.zeros((16, 16), bool)]
    masks[2][3:8, 3:8] = True
    maps = [rng.random((1, 16, 16)) * 0.3 for _ in range(3)]
    maps[2][0][3:8, 3:8] = 0.9
    doc = anomaly_document(np.array([0, 0, 1], bool), np.array([0.1, 0.2, 0.8]), maps, masks)
    assert doc["image_auroc"] == 1.0 and doc["image_f1"] == 1.0
    assert doc["pixel_auroc"] == 1.0 and doc["pro"] == pytest.approx(1.0)
    assert doc["n_masks"] == 1 and doc["false_reject_rate"] == 0.0  # anomalous images with a mask


def test_the_report_grid_shows_misses_and_false_alarms_before_the_easy_detections():
    from edgetl.host.anomaly_report import failures_first

    labels = [1, 1, 1, 0, 0, 0]  # anomalous, anomalous, anomalous, good, good, good
    scores = np.array([0.95, 0.30, 0.10, 0.60, 0.20, 0.90])
    assert failures_first(labels, scores, limit=4) == [(2, "MISS"), (5, "FALSE ALARM"), (1, "MISS"),
                                                       (3, "FALSE ALARM")]
    assert failures_first(labels, scores)[4:] == [(0, ""), (4, "")]  # then the rest, highest score first


def test_an_anomaly_training_folder_with_defect_folders_trains_on_its_good_images(tmp_path):
    import cv2

    from edgetl.data.anomaly import load_anomaly_split
    from edgetl.data.folder import DataWarning

    for kind, n in (("good", 3), ("crack", 2)):
        (tmp_path / "train" / kind).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / "train" / kind / f"{i}.png"), np.full((8, 8, 3), 100, np.uint8))
    with pytest.warns(DataWarning, match=r"trained on its 'good' images only; 2 image\(s\) of crack left out"):
        samples = load_anomaly_split(tmp_path / "train", what="data.train", good_only=True)
    assert len(samples.items) == 3 and samples.kinds == ["good"] * 3 and samples.labels == [0, 0, 0]
