"""The two preprocessing conventions and image loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from steadysam.datafiles import ImageError
from steadysam.preprocess import Frame, image_to_tensor, load_image

MEAN = torch.tensor([123.675, 116.28, 103.53])
STD = torch.tensor([58.395, 57.12, 57.375])


def test_focsam_frame_pads_to_32_before_resizing():
    # docs/focsam.md §1.1: a 481x321 Berkeley image becomes 512x352 -> 1024x704.
    f = Frame.create("focsam", (481, 321), 1024)
    assert f.padded_size == (512, 352)
    assert f.input_size == (1024, 704)
    xy = f.coords_to_model(np.array([[100.0, 200.0]]))
    assert np.allclose(xy, [[100 * 704 / 352, 200 * 1024 / 512]])
    s = Frame.create("sam", (481, 321), 1024)
    assert s.padded_size == (481, 321) and s.input_size == (1024, 683)
    assert np.allclose(
        s.coords_to_model(np.array([[100.0, 200.0]])), [[100 * 683 / 321, 200 * 1024 / 481]]
    )


def test_focsam_tensor_is_bgr_normalised_with_rgb_stats_and_zero_padded():
    img = np.zeros((481, 321, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 100, 50  # R, G, B
    x = image_to_tensor(img, Frame.create("focsam", (481, 321), 1024), MEAN, STD)
    assert x.shape == (1, 3, 1024, 1024)
    # Channel 0 carries Blue, normalised with the first (red) statistics: no channel swap.
    assert torch.allclose(x[0, :, 500, 300], (torch.tensor([50.0, 100, 200]) - MEAN) / STD)
    # Content ends at row 481*2 = 962 and column 321*2 = 642; the /32 pad (zeros in normalised
    # space) is resized with the image, then the frame is zero-padded to 1024.
    assert torch.allclose(x[0, :, 958, 300], (torch.tensor([50.0, 100, 200]) - MEAN) / STD)
    assert (x[0, :, 966:, :] == 0).all() and (x[0, :, :, 646:] == 0).all()
    # The content/pad boundary is blended bilinearly (no hard edge): resize after padding.
    assert 0 < abs(x[0, 0, 962, 300].item()) < abs(x[0, 0, 958, 300].item())


def test_sam_tensor_is_rgb_resized_then_padded():
    img = np.zeros((100, 50, 3), np.uint8)
    img[..., 0] = 255
    x = image_to_tensor(img, Frame.create("sam", (100, 50), 64), MEAN, STD)
    assert x.shape == (1, 3, 64, 64)
    assert torch.allclose(x[0, :, 10, 10], (torch.tensor([255.0, 0, 0]) - MEAN) / STD)
    assert (x[0, :, :, 32:] == 0).all()


def test_logits_to_original_focsam_crops_padding():
    f = Frame.create("focsam", (40, 70), 128)  # padded 64x96 -> 85x128
    assert f.padded_size == (64, 96) and f.input_size == (85, 128)
    low = torch.full((1, 1, 32, 32), -5.0)
    low[..., :11, :] = 5.0  # top third of the content (85/128 of the frame is content)
    out = f.logits_to_original(low)
    assert out.shape == (1, 1, 40, 70)
    rows = (out[0, 0] > 0).any(1).nonzero().max().item()
    # 11/32 of 128 = 44 frame rows -> 44 * 64/85 = 33 padded rows; all original rows < 40.
    assert 30 <= rows <= 35


RGB = np.array([7, 80, 200], np.uint8)  # distinct channels: an order or alpha slip shows


@pytest.mark.parametrize(
    "image, rgb",
    [
        (np.full((5, 6), 7, np.uint8), (7, 7, 7)),
        (np.full((5, 6, 1), 7, np.uint8), (7, 7, 7)),
        (np.full((5, 6, 3), RGB), RGB),
        (np.full((5, 6, 4), [*RGB, 33], np.uint8), RGB),  # alpha dropped
        (np.full((5, 6, 3), RGB.astype(np.uint16) * 257), RGB),
        (np.full((5, 6, 3), RGB / 255, np.float32), RGB),
        (np.full((5, 6, 3), RGB, np.float64), RGB),
        (Image.fromarray(np.full((5, 6, 3), RGB)), RGB),
        (Image.fromarray(np.full((5, 6, 4), [*RGB, 33], np.uint8), mode="RGBA"), RGB),
        (Image.fromarray(np.full((5, 6), 7, np.uint8), mode="L"), (7, 7, 7)),
        (torch.from_numpy(np.full((5, 6, 3), RGB)), RGB),
    ],
)
def test_load_image_accepts_common_inputs(image, rgb):
    out = load_image(image)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    assert (out == np.asarray(rgb, np.uint8)).all(), out[0, 0]


def test_load_image_path_and_errors(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(np.full((4, 3, 3), 9, np.uint8)).save(p)
    assert load_image(p).shape == (4, 3, 3)
    assert load_image(str(p)).shape == (4, 3, 3)
    with pytest.raises(ImageError, match="missing.png.*no such file"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.jpg"):
        load_image(bad)
    with pytest.raises(ImageError, match="unsupported image type"):
        load_image([[1, 2], [3, 4]])
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((2, 2, 3), np.nan))


@pytest.mark.parametrize("convention", ["sam", "focsam"])
@pytest.mark.parametrize("size", [(480, 854), (854, 480), (300, 301), (1024, 1024), (7, 1000)])
def test_logits_to_original_is_bit_identical_to_full_upsampling(convention, size):
    """Only the low-res rows / columns the crop needs are upsampled; the result must equal
    official SAM's postprocess_masks (upsample to S x S, crop, resize) bit for bit."""
    import torch.nn.functional as F

    frame = Frame.create(convention, size, 1024)
    logits = torch.randn(1, 2, 256, 256, generator=torch.Generator().manual_seed(0))
    ref = F.interpolate(logits, (1024, 1024), mode="bilinear", align_corners=False)
    ref = ref[..., : frame.input_size[0], : frame.input_size[1]]
    ref = F.interpolate(ref, frame.padded_size, mode="bilinear", align_corners=False)
    ref = ref[..., : size[0], : size[1]]
    assert torch.equal(frame.logits_to_original(logits), ref)
