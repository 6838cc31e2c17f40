"""Keyed, invisible watermark in the pixels of single-channel 8/12/16-bit images.

A DICOM signature lives in tags, and a forger can strip them or export the pixels to PNG or JPEG. This mark
lives in the pixels, so a synthetic image stays identifiable afterwards (the role C2PA gives to soft bindings);
its 64-bit payload is the id of the audit record of the generation.

Scheme (version 1): tiled, keyed spread spectrum in a mid-frequency band, with a synchronisation code.

* One tile of 128x128 pixels holds 1,024 chips on a 4-pixel grid. Each chip is a band-limited impulse: the
  tile's spectrum is kept between 3.5 and 15 cycles per tile (0.03 to 0.12 cycles per pixel). Below that band
  the host image dominates; above it, halving the size, JPEG and 8-bit windowing remove the mark. Band-limited
  chips make a smooth, noise-like field without block edges.
* 320 chips (at key-chosen places) carry key-chosen signs: the synchronisation code. The other 704 carry the
  payload: 64 bits + CRC-32, coded by the rate-1/3, K=7 convolutional code (306 bits), each coded bit on two or
  three chips, scrambled by key-chosen signs. The tile is repeated over the whole image.
* Embedding scales the field by a perceptual mask: 0.3 x the local activity (RMS of the high-pass image,
  eroded so that edge contrast does not spread into flat tissue beside it), at least 66 dB below the image's
  dynamic range (and 0.6 of an integer step, which rounding would otherwise erase), then limited so the mark
  stays at least 46 dB below the image's own dynamic range and 50.5 dB below the stored range.
* Detection whitens the image (high-pass, divided by its local RMS, clipped), which removes most of the host,
  the window and the gain; folds it into one tile (summing all tiles, so any crop and any number of tiles
  work); filters it with the chip band (matched filter); and correlates with the key's synchronisation comb for
  all 128x128 cyclic offsets at once by FFT. Resizing is handled by trying each scale in ``scales`` (default
  1, 0.5 and 2): the image is resampled back by 1/scale first. Crops change only the offset.
* The statistic at each offset is z = sum(s_j y_j) / sqrt(sum(y_j**2)) over the synchronisation chips, with
  s_j the key's signs. For an image made without the key, the signs are independent of y, so by Hoeffding's
  inequality P(|z| >= t) <= 2 exp(-t**2 / 2) whatever the image: no model of the image is assumed. The union
  over offsets, both signs (an inverted export), scales and keys gives the stated false-alarm probability.
  At the best offset the payload is decoded (soft Viterbi); the payload chips' signs are keyed independently of
  the synchronisation signs, so for an unmarked image the decoded word is uniform and passes the CRC-32 with
  probability 2**-32, which multiplies the bound. PRESENT needs the bound <= ``threshold_pfa`` (default 1e-9);
  the payload is reported only if its CRC matches.
* Keys rotate: detection tries every key it is given and reports the key id of the one that matched.

Limits: the mark needs about 256x256 pixels at the embedding scale to carry its 96 coded bits robustly; smaller
images are marked but may not be detected after attacks (or at all: 128x128 CT). Rotation, flips and scales
outside ``scales`` are not searched.
"""

from provenance.watermark._core import DEFAULT_SCALES, detect, embed
from provenance.watermark.models import WatermarkError, WatermarkKey, WatermarkReport, WatermarkStatus

__all__ = [
    "DEFAULT_SCALES",
    "WatermarkError",
    "WatermarkKey",
    "WatermarkReport",
    "WatermarkStatus",
    "detect",
    "embed",
]
