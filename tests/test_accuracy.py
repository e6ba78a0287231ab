import numpy as np

from svdtrt.media.metrics import clip_metrics, cosine_similarity, psnr


def test_psnr_of_a_broken_clip_fails_every_threshold():
    good = np.zeros((2, 8, 8, 3), np.float32)
    assert psnr(good, good) == 200.0
    bad = good.copy()
    bad[1, 0, 0, 0] = np.nan
    assert psnr(bad[1], good[1]) == float("-inf")
    assert clip_metrics(bad, good)["min_psnr_db"] < 60


def test_psnr_and_cosine_values():
    a = np.full((4, 4, 3), 0.5)
    assert abs(psnr(a + 0.01, a) - 40.0) < 1e-9  # 10 log10(1 / 1e-4)
    assert abs(cosine_similarity(a, -a) + 1.0) < 1e-12
