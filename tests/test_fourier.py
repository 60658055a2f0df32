"""FFT helpers: Fourier cropping against a band-limited signal, FRC, masks."""

import numpy as np
import pytest

from class2d import fourier


def band_limited(box: int, r_max: int, seed: int = 0) -> np.ndarray:
    """A real image with Fourier coefficients only within radius r_max (d-box px)."""
    rng = np.random.default_rng(seed)
    spec = np.zeros((box, box // 2 + 1), complex)
    keep = fourier.radius_grid(box) <= r_max
    spec[keep] = rng.normal(size=keep.sum()) + 1j * rng.normal(size=keep.sum())
    return fourier.centered_irfft2(spec, box)


def test_fourier_crop_keeps_a_band_limited_image_exactly():
    big = band_limited(64, 10)
    small = fourier.fourier_crop(big[None], 32)[0]
    # sampling the same continuous image on a grid twice as coarse: every other pixel
    np.testing.assert_allclose(small, big[::2, ::2], atol=1e-10)


def test_fourier_crop_then_pad_is_identity_for_band_limited_images():
    img = band_limited(48, 8, seed=3)
    back = fourier.fourier_crop(fourier.fourier_crop(img[None], 24), 48)[0]
    np.testing.assert_allclose(back, img, atol=1e-10)


def test_frc_of_identical_images_is_one_and_of_independent_noise_near_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 64))
    np.testing.assert_allclose(fourier.frc(a, a)[1:], 1.0, atol=1e-12)
    curve = fourier.frc(a, rng.normal(size=(64, 64)))
    assert np.abs(curve[4:]).max() < 0.35
    assert np.abs(curve[4:]).mean() < 0.1


def test_frc_resolution_reads_the_threshold_crossing():
    curve = np.array([1.0, 0.9, 0.8, 0.6, 0.4, 0.1, 0.0])
    assert fourier.frc_resolution(curve, box=12, apix=2.0, threshold=0.5) == pytest.approx(8.0)


def test_circular_mask_soft_edge():
    mask = fourier.circular_mask(32, 10.0, 4.0)
    assert mask[16, 16] == 1.0 and mask[16, 16 + 10] == pytest.approx(1.0)
    assert mask[16, 16 + 12] == pytest.approx(0.5)
    assert mask[16, 16 + 15] == pytest.approx(0.0, abs=1e-6)


def test_pixel_grid_is_centred_on_the_origin_pixel():
    for box in (5, 6):
        y, x = fourier.pixel_grid(box)
        assert (y[box // 2, box // 2], x[box // 2, box // 2]) == (0, 0)
        assert (y[0, 0], x[0, 0]) == (-(box // 2), -(box // 2))
        assert (y[-1, 0], x[0, -1]) == (box - 1 - box // 2, box - 1 - box // 2)
        radius = fourier.pixel_radius(box)
        for row, col in np.ndindex(box, box):
            assert radius[row, col] == np.sqrt((row - box // 2) ** 2 + (col - box // 2) ** 2)
