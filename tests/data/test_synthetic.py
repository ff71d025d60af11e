"""data.synthetic: seeded EM-like slices with a learnable membrane of realistic share."""
import cv2
import numpy as np

from unet_perf.data.synthetic import membranes


def test_shapes_dtypes_and_names():
    pairs = membranes(3, size=64, seed=1)
    assert pairs.images.shape == (3, 64, 64) and pairs.images.dtype == np.uint8
    assert pairs.masks.shape == (3, 64, 64) and pairs.masks.dtype == np.uint8
    assert set(np.unique(pairs.masks)) == {0, 1}
    assert pairs.names == ["synthetic[0]", "synthetic[1]", "synthetic[2]"]


def test_same_seed_same_arrays_different_seed_different():
    first, again, other = membranes(2, 128, seed=5), membranes(2, 128, seed=5), membranes(2, 128, seed=6)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.masks, again.masks)
    assert not np.array_equal(first.masks, other.masks)
    assert not np.array_equal(first.images, other.images)


def test_a_prefix_of_a_larger_set_is_the_same():
    few, many = membranes(2, 96, seed=2), membranes(4, 96, seed=2)
    np.testing.assert_array_equal(few.images, many.images[:2])


def test_membrane_share_is_realistic_over_seeds():
    for seed in range(4):
        share = 1.0 - membranes(2, 512, seed=seed).masks.mean()
        assert 0.12 <= share <= 0.30, (seed, share)


def test_membrane_is_darker_than_interior():
    pairs = membranes(3, 256, seed=0)
    for image, mask in zip(pairs.images, pairs.masks):
        membrane, interior = image[mask == 0].mean(), image[mask == 1].mean()
        assert interior - membrane > 40, (membrane, interior)


def test_many_cells_and_membranes_of_varying_thickness():
    mask = membranes(1, 512, seed=4).masks[0]
    cells = cv2.connectedComponents(mask, connectivity=4)[0] - 1
    assert 50 < cells < 400
    # half-thickness of membrane = distance to the interior; its ridge values vary between about 1 and 3 px
    ridge = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, 3)
    assert ridge.max() >= 2.5 and np.percentile(ridge[mask == 0], 50) <= 2.0


def test_images_are_textured_not_flat():
    image = membranes(1, 256, seed=0).images[0].astype(np.float32)
    mask = membranes(1, 256, seed=0).masks[0]
    assert image[mask == 1].std() > 8  # cell levels, organelles, illumination and noise
