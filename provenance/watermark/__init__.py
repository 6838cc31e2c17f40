"""Keyed, invisible watermark in the pixels of single-channel 8/12/16-bit images.

A DICOM signature lives in tags, and a forger can strip them or export the pixels to PNG or JPEG. This mark
lives in the pixels, so a synthetic image stays identifiable afterwards (the role C2PA gives to soft bindings);
its 64-bit payload is the id of the audit record of the generation.

Scheme (version 2): tiled, keyed spread spectrum in a mid-frequency band, with a synchronisation code.

Why spread spectrum in the pixel domain rather than a transform-domain (DCT/DWT block) mark: the attacks of the
brief resample (0.5x, 2x) and crop at arbitrary offsets, which move every block boundary; a tiled additive
pattern only shifts or scales, and the detector finds the shift by one FFT correlation and tries the scales.
Its statistic is a sum of key-signed terms, whose null distribution is known whatever the image (below).

* One tile of 128x128 pixels holds 4,096 chips on a 2-pixel grid. Each chip is a band-limited impulse: the
  tile's spectrum is kept between 7 and 30 cycles per tile (0.055 to 0.23 cycles per pixel), minus the lines at
  16 cycles per tile where JPEG's 8x8 block edges put their energy. Below the band, anatomy dominates (its power
  falls about as 1/f**2); above it, halving the size and JPEG remove the mark. Band-limited chips make a smooth,
  noise-like field without block edges.
* 1,280 chips (at key-chosen places) carry key-chosen signs: the synchronisation code. The other 2,816 carry
  the payload: 64 bits + a 16-bit check code, coded by the rate-1/3, K=7 convolutional code (258 bits), each
  coded bit on ten or eleven chips, scrambled by key-chosen signs. The tile is repeated over the whole image.
* Embedding scales the field by a perceptual mask: 0.6 x the local activity (RMS of the high-pass image, eroded
  so that edge contrast does not spread into flat tissue beside it, capped at 3 x its typical value); at least
  0.7 of an 8-bit grey level of the display window inside it when the window is known (a DICOM file's VOI
  window, :func:`display_window`), so that an 8-bit export through it keeps the mark; at least 0.6 of an
  integer step, which rounding would otherwise erase; then, if needed, the activity part is scaled down (the
  floor kept while it fits) to stay 50.5 dB below the stored range and 40 dB below the image's own 0.1-99.9
  percentile range. No window-based floor is used when the window is not
  known: a guessed wide window would put a visible mark into flat regions that a narrow window shows.
* Detection whitens the image (high-pass, divided by its local RMS, clipped), which removes most of the host,
  the window and the gain; folds it into one tile (summing all tiles, so any crop and any number of tiles
  work); filters it with the chip band (matched filter); and correlates with the key's synchronisation comb for
  all 128x128 cyclic offsets at once by FFT. Resizing is handled by trying each scale in ``scales`` (default
  1, 0.5 and 2): the image is resampled back by 1/scale first (area average down, cubic up). Crops change
  only the offset.
* The statistic at each offset is z = sum(s_j y_j) / sqrt(sum(y_j**2)) over the synchronisation chips, with
  s_j the key's signs. For an image made without the key, the signs are independent of y, so by Hoeffding's
  inequality P(|z| >= t) <= 2 exp(-t**2 / 2) whatever the image: no model of the image is assumed. The union
  over offsets and both signs (an inverted export) gives the tail of one search; every key and every scale
  that could be tried multiplies it (Bonferroni), also when a match ends the search early.
* At the best offset the payload is decoded (soft Viterbi on the chip values, clipped at 2.5 robust standard
  deviations so that a few edge-dominated chips cannot outvote the rest). The payload chips' scrambling signs
  are uniform
  and independent of the sync signs and of the image, so the soft vector's law is unchanged by flipping any of
  its signs, in particular by any codeword; the Viterbi decoder commutes with such flips, hence the decoded
  80-bit word of an unmarked image is uniform and passes the check code with probability exactly 2**-16. The
  stated false-alarm probability is keys x scales x tail(z) x 2**-16 when the code checks (keys x scales x
  tail(z) when it does not); PRESENT needs it <= ``threshold_pfa`` (default 1e-9). With one key and three
  scales that means |z| >= 6.5 and a matching check code, or |z| >= 8.0 alone (then without a payload).
* Keys rotate: detection tries every key it is given and reports the key id of the one that matched.

Limits: detection needs one whole tile, ``MIN_SIDE`` = 128 pixels a side at the embedding scale; a smaller
image is TOO_SMALL (nothing is tested). The mark is robust after attacks from about 256x256 pixels (a 60% crop
of 256 is 154). Flat, noise-free regions (phantoms, heavily denoised images) get only the rounding floor: in a
narrow window a faint fine grain can show there, and an 8-bit export through a window much wider than the one
embedding was told keeps little of the mark there. Rotation, flips and scales outside ``scales`` are not
searched.
"""

from provenance.watermark._core import DEFAULT_SCALES, detect, embed
from provenance.watermark._dicom import display_window
from provenance.watermark.models import WatermarkError, WatermarkKey, WatermarkReport, WatermarkStatus

__all__ = [
    "DEFAULT_SCALES",
    "WatermarkError",
    "WatermarkKey",
    "WatermarkReport",
    "WatermarkStatus",
    "detect",
    "display_window",
    "embed",
]
