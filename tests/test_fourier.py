"""FFT helpers: Fourier cropping against a band-limited signal, FRC, masks."""

import numpy as np
import pytest

from class2d import fourier
from class2d.bilinear import bilinear


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


# ---- one rotation: every real-space turn is fourier.rotation_coordinates', about the
# centre pixel (box//2, box//2), the origin of the FFT convention (for an even box that is
# not the array's middle (box−1)/2, about which np.rot90 and ndimage.rotate turn)

def quarter_turn_oracle(image: np.ndarray) -> np.ndarray:
    """``image`` turned by +90° about pixel (c, c), c = box//2, pixel by pixel: the output
    at (row, col) reads the input at (2c − col, row) (x → y, ``rotation_coordinates``'
    sense); a source outside the box reads 0."""
    box = image.shape[-1]
    c = box // 2
    out = np.zeros_like(image)
    for row in range(box):
        for col in range(box):
            source = 2 * c - col
            if 0 <= source < box:
                out[row, col] = image[source, row]
    return out


def compact_image(box: int, seed: int = 0) -> np.ndarray:
    """A random (box, box) image, zero beyond 0.4·box of the centre pixel."""
    image = np.random.default_rng(seed).normal(size=(box, box))
    return image * (fourier.pixel_radius(box) < 0.4 * box)


def rotation_paths():
    """name → f(image (D, D), angle °) turning it as each caller does."""
    import types

    from class2d.em import export, outliers, refill
    from class2d.rebalance import _rotation_operator

    def vertical(image, angle):
        # align_vertically turns by the φ it finds: here the angle itself
        previous = export.vertical_rotation
        export.vertical_rotation = lambda _: np.radians(angle)
        try:
            return export.align_vertically(image[None], np.zeros(1), np.zeros(1, int))[0][0]
        finally:
            export.vertical_rotation = previous

    def aligned(image, angle):
        # refill undoes the particle's ψ: turning by −ψ
        stack = types.SimpleNamespace(images=lambda rows: image[None].astype(np.float32))
        zero = np.zeros(1)
        return refill.aligned_images(stack, np.zeros(1, int), np.radians([-angle]), zero, zero)[0]

    return {
        "rotate_images": lambda image, angle: fourier.rotate_images(image, angle),
        "outliers.rotated": lambda image, angle: outliers.rotated(
            image[None], np.zeros(1, int), np.radians([angle]))[0],
        "rebalance operator": lambda image, angle: (
            _rotation_operator(image.shape[-1], np.array([angle])) @ image.ravel()
        ).reshape(image.shape),
        "export.align_vertically": vertical,
        "refill.aligned_images": aligned,
    }


@pytest.mark.parametrize("path", sorted(rotation_paths()))
@pytest.mark.parametrize("box", [32, 33])
def test_every_rotation_turns_about_the_centre_pixel(path, box):
    turn = rotation_paths()[path]
    c = box // 2
    delta = np.zeros((box, box), np.float32)
    delta[c, c] = 1.0
    rows, cols = np.mgrid[:box, :box]
    for angle in (17.0, 90.0, 143.0):
        # the centre pixel reads itself; the bilinear spread around it is centred there
        turned = turn(delta, angle)
        assert turned[c, c] == pytest.approx(1.0, abs=1e-6), angle
        centre = [(turned * rows).sum() / turned.sum(), (turned * cols).sum() / turned.sum()]
        np.testing.assert_allclose(centre, [c, c], atol=1e-6, err_msg=f"{angle}°")
    image = compact_image(box).astype(np.float32)
    np.testing.assert_allclose(turn(image, 90.0), quarter_turn_oracle(image), atol=1e-5)
    # a point 5 px right of the centre turns to 5 px below it (+y, row c + 5)
    point = np.zeros((box, box), np.float32)
    point[c, c + 5] = 1.0
    expected = np.zeros_like(point)
    expected[c + 5, c] = 1.0
    np.testing.assert_allclose(turn(point, 90.0), expected, atol=1e-6)


def test_the_quarter_turn_oracle_is_rot90_on_odd_boxes():
    image = compact_image(33, seed=1)
    np.testing.assert_array_equal(quarter_turn_oracle(image), np.rot90(image, -1))


def test_align_finds_a_quarter_turn_about_the_centre_pixel():
    image = compact_image(32, seed=2)
    angle, shift, correlation = fourier.align(quarter_turn_oracle(image), image,
                                              np.arange(0.0, 360.0, 10.0))
    assert angle == 90.0
    np.testing.assert_allclose(shift, 0.0, atol=1e-6)
    assert correlation == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 9, 12)])
def test_bilinear_reads_as_map_coordinates_does(shape):
    # the kernel against SciPy's order-1 spline, 0 outside: random points in and around
    # the grid, on its edges and corners exactly, and far outside
    from scipy import ndimage

    rng = np.random.default_rng(3)
    images = rng.normal(size=shape)
    height, width = shape[1:]
    rows = np.concatenate([rng.uniform(-2, height + 1, 500), [0, height - 1, height - 1, -1e-9,
                                                              height - 1 + 1e-9, 50, 3]])
    cols = np.concatenate([rng.uniform(-2, width + 1, 500), [0, width - 1, 0, 2, 2, 1, -50]])
    where = np.stack([rows, cols]).reshape(2, 13, 39)
    got = bilinear(images, where)
    assert got.shape == (shape[0], 13, 39)
    for image, values in zip(images, got):
        np.testing.assert_allclose(values, ndimage.map_coordinates(image, where, order=1),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("box", [32, 33])
def test_shifted_spectra_are_those_of_the_shifted_images(box):
    rng = np.random.default_rng(4)
    images = rng.normal(size=(4, box, box))
    shifts = rng.normal(scale=4.0, size=(4, 2))
    expected = np.fft.rfft2(fourier.shift_images(images, shifts))
    np.testing.assert_allclose(fourier.shifted_spectra(images, shifts), expected, rtol=0,
                               atol=1e-10 * np.abs(expected).max())
