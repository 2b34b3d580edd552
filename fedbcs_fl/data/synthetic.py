"""The embedded multi-site benchmarks: one label process, a different acquisition per site.

Real medical images cannot ship with the package, so the default experiments run on data
generated here, deterministically from a seed, with no downloads and no files. Each data
set carries the problem FedBCS addresses (paper Sec. 1 and 4.1): every site draws its
masks from one shared content process, and only the acquisition differs (the "style" a
scanner, a staining protocol or a magnification imposes). Since version 2 of the
generators (:data:`SYNTHETIC_VERSION` per data set, recorded in every run's
``config.json``) that style is hard to remove, because it is the kind real sources have:

- **Style varies per image** around the site's mean (stain vectors and strengths,
  per-channel gain and offset, gamma, blur, noise), and one site of each set pools two or
  three sub-styles, as real sources pool scanners or tumour types. Local batches are
  single-site, so BatchNorm's batch statistics cannot remove a per-image style; FSR,
  which acts on each image's channel moments, can.
- **Non-linear, site-specific intensity transfer**: a monotone piecewise-linear curve per
  site, saturating or clipping at some sites.
- **Frequency-domain shifts**: the low-frequency amplitude of each image is blended with
  a fixed site reference spectrum (the FDA idea, phase kept), site-specific anisotropic
  blur (the scanner's MTF), mid/high-frequency gain, and periodic artefacts at one site
  (stripes on a slide scanner, an N/2 ghost on an MR scanner).
- **Resolution and magnification** differ per site: nuclei size in pixels; the prostate's
  field of view, in-plane resolution and slice thickness.
- **Content that colour or position alone cannot solve**: nuclei of varied size that touch
  and overlap, with unlabelled dark distractors (red blood cells, hematoxylin-dark
  debris, tissue folds); prostates of varied position and size, including apex and base
  slices with small cross-sections, among seminal vesicles, muscles and rectum.
- **Unequal site sizes**: each site has its own share of ``n_train`` (``SITE_SIZES``).

``synthetic-nuclei`` (4 sites, RGB)
    Nuclei, red blood cells and debris on textured stroma, rendered with the Beer-Lambert
    law from hematoxylin and eosin densities.
``synthetic-prostate`` (6 sites, 3 slices)
    Three adjacent axial slices of a smooth 3-D gland with T2-like anatomy around it; the
    mask is the gland in the centre slice.
``synthetic-prostate-zones`` (6 sites, 3 slices, 3 classes)
    The images of ``synthetic-prostate``, bit for bit; the mask tells the gland's two zones
    apart: 1 the peripheral zone (the brighter posterior outer shell), 2 the transition
    zone (the central gland), 0 background.

The numbers were calibrated against targets fixed in advance on FedAvg, site-local and
pooled training (``fedbcs calibrate-data``; docs/data.md), never on any method's result.

Layout: the public :func:`make_synthetic`, the shared helpers (seeding, filters, blobs,
style transfer), then per data set its content and renderer. The style and site tables
are in :mod:`~fedbcs_fl.data.synthetic_sites`.

Example:
    >>> sites = make_synthetic("synthetic-nuclei", seed=0, n_train=4, n_test=2)
    >>> [(site.name, len(site.train)) for site in sites]
    [('site-A', 6), ('site-B', 3), ('site-C', 2), ('site-D', 5)]
    >>> image, mask = sites[0].train[0]
    >>> tuple(image.shape), image.dtype, tuple(mask.shape), mask.dtype
    ((3, 64, 64), torch.float32, (64, 64), torch.int64)
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .base import SiteData
from .synthetic_sites import SITE_SIZES, SITES, SYNTHETIC_SITES, SYNTHETIC_VERSION, Curve, Site

__all__ = [
    "SITE_SIZES",
    "SYNTHETIC_SITES",
    "SYNTHETIC_VERSION",
    "make_synthetic",
    "synthetic_nbytes",
]

# A data set drawn from the random streams of another: the same images, other labels.
_STREAMS_OF = {"synthetic-prostate-zones": "synthetic-prostate"}

# Sizes are given in pixels of this reference size; other image sizes show the same
# masks at a finer or coarser resolution (textures, noise and distractors are drawn anew).
_REFERENCE_SIZE = 64
_MIN_IMAGE_SIZE = 32
_MIN_TRAIN = 2
_SPLITS = ("train", "test")


def site_train_count(name: str, site: str, n_train: int) -> int:
    """Training images of ``site`` for a requested mean of ``n_train`` per site."""
    return max(_MIN_TRAIN, round(SITES[name][site].size * n_train))


def synthetic_nbytes(
    name: str, n_train: int, n_test: int, image_size: int, sites: list[str] | None = None
) -> int:
    """Bytes the images and masks of :func:`make_synthetic` take in memory (float32
    ``[3, S, S]`` images and int64 ``[S, S]`` masks), for the same arguments."""
    per_image = image_size * image_size * (3 * 4 + 8)
    names = SYNTHETIC_SITES[name] if sites is None else sites
    known = [site for site in names if site in SITE_SIZES[name]]  # make_synthetic names the rest
    images = sum(site_train_count(name, site, n_train) + n_test for site in known)
    return images * per_image


def make_synthetic(
    name: str,
    seed: int = 0,
    n_train: int = 24,
    n_test: int = 12,
    image_size: int = 64,
    sites: list[str] | None = None,
) -> list[SiteData]:
    """Generate a synthetic multi-site segmentation benchmark.

    Every (seed, site, split) has its own random streams, one for the content (masks and
    anatomy) and one for the style, so a site's data does not depend on which other
    sites are requested, and train and test are independent draws.

    Args:
        name: ``"synthetic-nuclei"``, ``"synthetic-prostate"`` or
            ``"synthetic-prostate-zones"`` (see ``SYNTHETIC_SITES``).
        seed: non-negative integer; the same seed gives identical tensors. Default 0.
        n_train: mean training images per site; site ``s`` gets
            ``max(2, round(SITE_SIZES[name][s] · n_train))``. Default 24.
        n_test: test images per site (equal on every site, so each site's score has the
            same precision). Default 12.
        image_size: height and width in pixels, at least 32. Default 64.
        sites: names of the sites to generate, in the order wanted; ``None`` (default)
            generates all sites of the data set in canonical order.

    Returns:
        One :class:`SiteData` per site, whose ``train`` and ``test`` are
        ``TensorDataset(images, masks)``: images float32 ``[N, 3, S, S]`` in [0, 1],
        masks int64 ``[N, S, S]`` with 0 background and 1 foreground (the zones set: 1
        peripheral, 2 transition zone).

    Raises:
        ValueError: unknown data set or site name, or a bad seed, size or count.
    """
    if name not in _GENERATORS:
        raise ValueError(
            f"unknown synthetic data set {name!r}; valid names: {', '.join(SYNTHETIC_SITES)}"
        )
    for arg, value, minimum in (
        ("seed", seed, 0),
        ("n_train", n_train, 1),
        ("n_test", n_test, 1),
        ("image_size", image_size, _MIN_IMAGE_SIZE),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{arg} must be an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"{arg} must be at least {minimum}, got {value}")
    valid_sites = SYNTHETIC_SITES[name]
    if sites is None:
        sites = valid_sites
    if not sites:
        raise ValueError(f"sites must not be empty; valid sites of {name}: {valid_sites}")
    unknown = [site for site in sites if site not in valid_sites]
    if unknown:
        raise ValueError(f"unknown sites {unknown} for {name}; valid sites: {valid_sites}")
    if len(set(sites)) != len(sites):
        raise ValueError(f"sites must not repeat, got {sites}")

    generate = _GENERATORS[name]
    dataset_index = list(SYNTHETIC_SITES).index(_STREAMS_OF.get(name, name))
    result = []
    for site in sites:
        site_index = valid_sites.index(site)
        spec = SITES[name][site]
        counts = (site_train_count(name, site, n_train), n_test)
        reference = _site_reference(dataset_index, site_index, image_size)
        splits = {}
        for split_index, (split, count) in enumerate(zip(_SPLITS, counts, strict=True)):
            content_gen, style_gen = (
                _generator(seed, dataset_index, site_index, split_index, stream)
                for stream in range(2)
            )
            images, masks = generate(content_gen, style_gen, count, image_size, spec, reference)
            splits[split] = TensorDataset(images, masks)
        result.append(SiteData(name=site, **splits))
    return result


# --------------------------------------------------------------------------------------
# Shared helpers: seeding, filters, intensity curves, FDA, sub-styles and blobs
# --------------------------------------------------------------------------------------


def _generator(seed: int, *key: int) -> torch.Generator:
    """A torch generator for one independent stream, derived with NumPy's SeedSequence."""
    state = np.random.SeedSequence(int(seed), spawn_key=key).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _frequencies(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FFT frequencies ``(fy [S, 1], fx [1, S])`` in cycles per pixel."""
    f = torch.fft.fftfreq(size)
    return f[:, None], f[None, :]


def _gaussian_transfer(
    size: int, sigma: float, anisotropy: float = 1.0, angle: float = 0.0
) -> torch.Tensor:
    """``[S, S]`` transfer function of a (possibly elongated) Gaussian kernel.

    Args:
        size: image size S.
        sigma: kernel sigma in pixels along ``angle``.
        anisotropy: sigma along ``angle`` over sigma across it. Default 1 (isotropic).
        angle: direction of the long axis in radians. Default 0.
    """
    fy, fx = _frequencies(size)
    along = fx * math.cos(angle) + fy * math.sin(angle)
    across = -fx * math.sin(angle) + fy * math.cos(angle)
    sigma_across = sigma / anisotropy
    return torch.exp(-2 * math.pi**2 * (sigma**2 * along**2 + sigma_across**2 * across**2))


def _filter(images: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """Multiply the spectrum of ``images [..., S, S]`` by a real ``transfer`` (zero phase)."""
    return torch.fft.ifft2(torch.fft.fft2(images) * transfer).real


def _random_field(
    gen: torch.Generator,
    shape: tuple[int, ...],
    sigma: float,
    anisotropy: float = 1.0,
    angle: float = 0.0,
) -> torch.Tensor:
    """Smooth periodic Gaussian noise of shape ``[..., S, S]``, zero mean and unit std per map.

    Args:
        gen: random stream.
        shape: output shape; the last two dimensions are the square image.
        sigma: correlation length in pixels (sigma of the smoothing kernel).
        anisotropy: see :func:`_gaussian_transfer`. Default 1.
        angle: see :func:`_gaussian_transfer`. Default 0.
    """
    white = torch.randn(shape, generator=gen)
    field = _filter(white, _gaussian_transfer(shape[-1], sigma, anisotropy, angle))
    field = field - field.mean(dim=(-2, -1), keepdim=True)
    return field / field.std(dim=(-2, -1), keepdim=True)


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float):
    """Uniform samples in ``[low, high)``."""
    return low + (high - low) * torch.rand(shape, generator=gen)


def _lognormal(gen: torch.Generator, shape: tuple[int, ...], sigma) -> torch.Tensor:
    """``exp(sigma · N(0, 1))``: a positive factor around 1 (``sigma`` may be a tensor)."""
    return torch.exp(sigma * torch.randn(shape, generator=gen))


def _piecewise(x: torch.Tensor, curve: Curve) -> torch.Tensor:
    """Apply a monotone piecewise-linear curve (levels at equally spaced inputs) to ``x``."""
    levels = torch.tensor(curve, dtype=x.dtype)
    position = x.clamp(0, 1) * (len(curve) - 1)
    low = position.floor().clamp(max=len(curve) - 2).long()
    fraction = position - low
    return levels[low] + fraction * (levels[low + 1] - levels[low])


# The site reference spectrum (FDA): its low frequencies, up to this radius in cycles per
# image, are blended into every image of the site.
_FDA_RADIUS = 5.0


def _site_reference(dataset_index: int, site_index: int, size: int) -> torch.Tensor:
    """``[3, S, S]`` amplitude spectrum of a site's reference image (fixed per site).

    The reference is a smooth random colour field, the same for every seed: the site's
    low-frequency signature, as an FDA target image is.
    """
    gen = _generator(0, dataset_index, site_index, 7)
    sigma = _uniform(gen, (1,), 0.04, 0.1).item() * size
    field = _random_field(gen, (3, size, size), sigma)
    gain = _uniform(gen, (3, 1, 1), 0.03, 0.08)
    return torch.fft.fft2(gain * field).abs()


def _fda(images: torch.Tensor, reference: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Blend the low-frequency amplitude of ``images [n, C, S, S]`` with ``reference``.

    ``|F|`` becomes ``(1 − w)|F| + w |F_ref|`` inside a disc of radius ``_FDA_RADIUS``
    cycles per image (DC excluded: the mean stays), with each image's own phase; ``weight``
    is ``[n, 1, 1, 1]``.
    """
    size = images.shape[-1]
    fy, fx = _frequencies(size)
    disc = (torch.sqrt(fy**2 + fx**2) * size <= _FDA_RADIUS).to(images.dtype)
    disc[0, 0] = 0
    spectrum = torch.fft.fft2(images)
    amplitude = spectrum.abs()
    blended = amplitude + weight * disc * (reference[: images.shape[1]] - amplitude)
    phase = torch.polar(torch.ones_like(amplitude), spectrum.angle())
    return torch.fft.ifft2(blended * phase).real


def _choose(gen: torch.Generator, n: int, site: Site) -> torch.Tensor:
    """Which of the site's sub-styles each of ``n`` images uses, ``[n]`` int64."""
    if len(site.styles) == 1:
        return torch.zeros(n, dtype=torch.long)
    mix = torch.tensor(site.mix or [1.0] * len(site.styles))
    return torch.multinomial(mix, n, replacement=True, generator=gen)


def _per_image(styles: tuple, choice: torch.Tensor, field: str) -> torch.Tensor:
    """``[n, ...]``: a style attribute of each image's sub-style."""
    table = torch.tensor([getattr(style, field) for style in styles], dtype=torch.float32)
    return table[choice]


def _blobs(
    gen: torch.Generator,
    n: int,
    size: int,
    centre: torch.Tensor,
    active: torch.Tensor,
    radius: torch.Tensor,
    elongation: tuple[float, float],
    wobble: float,
    softness: float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterise star-shaped blobs: ellipses whose outline radius has random 2nd and 3rd
    harmonics, in small patches merged with a scatter-max.

    Args:
        gen: random stream (orientation, elongation, outline).
        n: images.
        size: image size S.
        centre: ``[n, k, 2]`` blob centres (y, x) in pixels.
        active: ``[n, k]`` which blobs exist.
        radius: ``[n, k]`` mean semi-axis in pixels.
        elongation: range of long over short axis.
        wobble: std of the outline harmonics.
        softness: edge width in pixels of the soft coverage.
        weight: ``[n, k]`` height of each blob's coverage (default 1).

    Returns:
        ``distance [n, S, S]``, the largest signed distance into any blob in pixels (the
        mask is ``distance > 0``), and ``coverage [n, S, S]``, the soft indicator times
        the blob's weight, max over blobs.
    """
    k = centre.shape[1]
    stretch = _uniform(gen, (n, k), *elongation).sqrt()
    angle = torch.rand(n, k, generator=gen) * math.pi
    harmonics = (wobble * torch.randn(n, k, 2, generator=gen)).clamp(-0.25, 0.25)
    phase = torch.rand(n, k, 2, generator=gen) * 2 * math.pi

    half = math.ceil(float(radius.max()) * math.sqrt(elongation[1]) * 1.4) + 1
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    py = centre[..., 0, None, None].floor() + offsets[:, None]  # [n, k, P, 1]
    px = centre[..., 1, None, None].floor() + offsets[None, :]  # [n, k, 1, P]
    dy = py + 0.5 - centre[..., 0, None, None]
    dx = px + 0.5 - centre[..., 1, None, None]
    cos, sin = angle.cos()[..., None, None], angle.sin()[..., None, None]
    long_axis = (radius * stretch)[..., None, None]
    short_axis = (radius / stretch)[..., None, None]
    u = (dx * cos + dy * sin) / long_axis
    v = (-dx * sin + dy * cos) / short_axis
    theta = torch.atan2(v, u)
    outline = 1 + sum(
        harmonics[..., h, None, None] * torch.cos((h + 2) * theta + phase[..., h, None, None])
        for h in range(2)
    )
    distance = (outline - torch.sqrt(u**2 + v**2)) * radius[..., None, None]  # pixels

    inside_image = (py >= 0) & (py < size) & (px >= 0) & (px < size)
    valid = inside_image & active[..., None, None]
    batch = torch.arange(n)[:, None, None, None] * size * size
    index = (batch + py.clamp(0, size - 1) * size + px.clamp(0, size - 1)).long()
    index = index.expand_as(distance).reshape(-1)
    distance = torch.where(valid, distance, torch.tensor(-1e3)).reshape(-1)
    best = torch.full((n * size * size,), -1e3).scatter_reduce(0, index, distance, "amax")
    edge = torch.sigmoid(distance / softness)
    if weight is not None:
        edge = edge * weight[..., None, None].expand(n, k, 2 * half + 1, 2 * half + 1).reshape(-1)
    coverage = torch.zeros(n * size * size).scatter_reduce(0, index, edge, "amax")
    return best.view(n, size, size), coverage.view(n, size, size)


def _mtf(size: int, sigma: torch.Tensor, anisotropy: torch.Tensor, angle: torch.Tensor):
    """``[n, 1, S, S]`` transfer functions of per-image elongated Gaussian blurs.

    ``sigma`` (pixels, along ``angle``), ``anisotropy`` (along over across) and ``angle``
    (radians) are ``[n]``; see :func:`_gaussian_transfer` for one kernel.
    """
    fy, fx = _frequencies(size)
    sigma, anisotropy, angle = (t.view(-1, 1, 1, 1) for t in (sigma, anisotropy, angle))
    along = fx * angle.cos() + fy * angle.sin()
    across = -fx * angle.sin() + fy * angle.cos()
    return torch.exp(-2 * math.pi**2 * sigma**2 * (along**2 + (across / anisotropy) ** 2))


# --------------------------------------------------------------------------------------
# synthetic-nuclei
# --------------------------------------------------------------------------------------

# The content process, in reference pixels of a 64-pixel image at magnification 1.
_NUCLEI_PER_IMAGE = 22.0
_NUCLEUS_RADIUS = (1.8, 4.5)  # mean semi-axis range
_NUCLEUS_ELONGATION = (1.0, 2.0)  # long over short axis
_NUCLEUS_WOBBLE = 0.1  # std of the 2nd and 3rd harmonic of the outline radius
_CLUSTERS = 3  # nuclei crowd around this many points per image...
_CLUSTERED = 0.5  # ...with this probability each,
_CLUSTER_SPREAD = 5.0  # at this distance (std)
_RED_CELLS_PER_IMAGE = 4.0  # unlabelled distractors: round, eosin-dense
_RED_CELL_RADIUS = (2.0, 2.8)
_DEBRIS_PER_IMAGE = 6.0  # unlabelled distractors: small, irregular, hematoxylin-dark
_DEBRIS_RADIUS = (0.7, 1.6)
_FOLD_PROBABILITY = 0.35  # a tissue fold: a band where the section lies double
_FOLD_WIDTH = (2.5, 6.0)
_SHARPEN_CUTOFF = 0.12  # cycles per pixel where the sharpening gain has risen to 63 %
_STRIPE_PERIOD = 4.0  # reference pixels


def _sharpening(size: int, gain: torch.Tensor) -> torch.Tensor:
    """``[n, 1, S, S]`` transfer of a scanner's sharpening filter of per-image ``gain [n]``:
    ``1 + gain · (1 − exp(−(f / f_c)²))`` with ``f`` in cycles per reference pixel, so the
    filter is the same at every image size."""
    fy, fx = _frequencies(size)
    radius = torch.sqrt(fy**2 + fx**2) * size / _REFERENCE_SIZE
    high = 1 - torch.exp(-((radius / _SHARPEN_CUTOFF) ** 2))
    return 1 + gain.view(-1, 1, 1, 1) * high


def _counts(gen: torch.Generator, n: int, mean: float) -> tuple[torch.Tensor, int]:
    """Poisson counts per image as an ``[n, k]`` activity mask, and k (the cap)."""
    k = max(4, math.ceil(mean + 4 * math.sqrt(mean)))
    count = torch.poisson(torch.full((n, 1), mean), generator=gen)
    return torch.arange(k) < count, k


def _nuclei_content(gen: torch.Generator, n: int, size: int, magnification: float) -> dict:
    """The shared label process, seen at one site's magnification.

    Nuclei of varied size and shape, half of them crowded around a few points so that
    they touch and overlap, and unlabelled distractors: red blood cells, debris and, in
    some images, a tissue fold. A field of view holds ``1 / magnification²`` as much
    tissue as at magnification 1, so the content per unit of tissue is the same at
    every site.

    Returns:
        ``mask`` int64 ``[n, S, S]`` and the densities ``nuclei``, ``red_cells``,
        ``debris`` and ``fold``, float32 ``[n, S, S]``.
    """
    scale = size / _REFERENCE_SIZE * magnification
    area = 1 / magnification**2

    active, k = _counts(gen, n, _NUCLEI_PER_IMAGE * area)
    hubs = torch.rand(n, 1, _CLUSTERS, 2, generator=gen) * size
    hub = hubs[
        torch.arange(n)[:, None], 0, torch.randint(_CLUSTERS, (n, k), generator=gen)
    ]  # [n, k, 2]
    near = hub + _CLUSTER_SPREAD * scale * torch.randn(n, k, 2, generator=gen)
    anywhere = torch.rand(n, k, 2, generator=gen) * size
    clustered = torch.rand(n, k, 1, generator=gen) < _CLUSTERED
    centre = torch.where(clustered, near, anywhere).clamp(0, size - 1e-3)
    radius = _uniform(gen, (n, k), *_NUCLEUS_RADIUS) * scale
    darkness = _uniform(gen, (n, k), 0.7, 1.2)
    distance, nuclei = _blobs(
        gen,
        n,
        size,
        centre,
        active,
        radius,
        _NUCLEUS_ELONGATION,
        _NUCLEUS_WOBBLE,
        0.5 * scale,
        darkness,
    )
    chromatin = _random_field(gen, (n, size, size), 0.6 * scale)

    active, k = _counts(gen, n, _RED_CELLS_PER_IMAGE * area)
    centre = torch.rand(n, k, 2, generator=gen) * size
    radius = _uniform(gen, (n, k), *_RED_CELL_RADIUS) * scale
    _, red_cells = _blobs(gen, n, size, centre, active, radius, (1.0, 1.2), 0.03, 0.4 * scale)

    active, k = _counts(gen, n, _DEBRIS_PER_IMAGE * area)
    centre = torch.rand(n, k, 2, generator=gen) * size
    radius = _uniform(gen, (n, k), *_DEBRIS_RADIUS) * scale
    darkness = _uniform(gen, (n, k), 0.8, 1.5)
    _, debris = _blobs(gen, n, size, centre, active, radius, (1.0, 2.5), 0.2, 0.3 * scale, darkness)

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    angle = torch.rand(n, 1, 1, generator=gen) * math.pi
    offset = torch.rand(n, 1, 1, generator=gen) * size
    width = _uniform(gen, (n, 1, 1), *_FOLD_WIDTH) * scale
    across = coords[None, :, None] * angle.cos() + coords[None, None, :] * angle.sin()
    band = torch.sigmoid((width / 2 - (across - offset).abs()) / (0.5 * scale))
    fold = band * (torch.rand(n, 1, 1, generator=gen) < _FOLD_PROBABILITY)

    return {
        "mask": (distance > 0).long(),
        "nuclei": nuclei * (1 + 0.2 * chromatin).clamp(min=0),
        "red_cells": red_cells,
        "debris": debris,
        "fold": fold,
    }


def _stain_vectors(gen: torch.Generator, styles, choice, field: str, spread: torch.Tensor):
    """``[n, 3]`` per-image stain OD vectors: the sub-style's, perturbed, unit length."""
    base = _per_image(styles, choice, field)
    vectors = (base + spread[:, None] * torch.randn(base.shape, generator=gen)).abs()
    return vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-6)


def _render_nuclei(
    content_gen: torch.Generator,
    style_gen: torch.Generator,
    n: int,
    size: int,
    site: Site,
    reference: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``n`` nuclei images of one site.

    Each image draws a sub-style and its own style around it. ``OD = h · H + e · E`` with
    hematoxylin density ``h`` (nuclei, debris, a faint background, doubled on folds) and
    eosin density ``e`` (textured stroma displaced by nuclei, red blood cells);
    ``RGB = I0 · exp(-OD)``; then the MTF and the sharpening (one zero-phase filter), the
    FDA blend with the site reference, per-channel gain and offset, gamma, the site curve,
    stripes and noise.
    """
    content = _nuclei_content(content_gen, n, size, site.magnification)
    styles = site.styles
    choice = _choose(style_gen, n, site)
    value = {
        field: _per_image(styles, choice, field)
        for field in (
            "haematoxylin_strength", "eosin_strength", "texture_scale", "texture_anisotropy",
            "texture_angle", "texture_contrast", "blur", "blur_anisotropy", "blur_angle",
            "sharpen", "fda", "gamma", "stripes", "noise", "jitter",
        )
    }  # fmt: skip
    jitter = value["jitter"]
    scale = size / _REFERENCE_SIZE * site.magnification

    texture = torch.stack(
        [
            _random_field(
                style_gen,
                (1, size, size),
                float(value["texture_scale"][i]) * scale,
                float(value["texture_anisotropy"][i]),
                float(value["texture_angle"][i]),
            )[0]
            for i in range(n)
        ]
    )
    h_vector = _stain_vectors(style_gen, styles, choice, "haematoxylin", 0.08 * jitter)
    e_vector = _stain_vectors(style_gen, styles, choice, "eosin", 0.08 * jitter)
    strength = _lognormal(style_gen, (n, 2), 0.2 * jitter[:, None])
    illuminant = _per_image(styles, choice, "illuminant") * _lognormal(
        style_gen, (n, 3), 0.03 * jitter[:, None]
    )
    nuclei, fold = content["nuclei"], content["fold"]
    h = (value["haematoxylin_strength"] * strength[:, 0])[:, None, None] * (
        nuclei + content["debris"] + (0.08 + 0.04 * texture) * (1 + fold)
    )
    e = (value["eosin_strength"] * strength[:, 1])[:, None, None] * (
        (1 + value["texture_contrast"][:, None, None] * texture).clamp(min=0.05)
        * (1 - 0.6 * nuclei.clamp(max=1))
        * (1 + 0.8 * fold)
    ) + 2.0 * content["red_cells"]
    optical_density = (
        h[:, None] * h_vector[..., None, None] + e[:, None] * e_vector[..., None, None]
    )
    rgb = illuminant.clamp(max=1)[..., None, None] * torch.exp(-optical_density)

    blur = value["blur"] * _lognormal(style_gen, (n,), 0.25 * jitter) * scale
    transfer = _mtf(size, blur, value["blur_anisotropy"], value["blur_angle"])
    transfer = transfer * _sharpening(size, value["sharpen"])
    rgb = _filter(rgb, transfer)
    weight = (value["fda"] * _lognormal(style_gen, (n,), 0.3 * jitter)).clamp(max=1)
    rgb = _fda(rgb, reference, weight.view(-1, 1, 1, 1))

    gain = _lognormal(style_gen, (n, 3), 0.1 * jitter[:, None])[..., None, None]
    offset = 0.03 * jitter.view(-1, 1, 1, 1) * torch.randn(n, 3, 1, 1, generator=style_gen)
    gamma = value["gamma"] * _lognormal(style_gen, (n,), 0.12 * jitter)
    rgb = (gain * rgb + offset).clamp(1e-4, 1) ** gamma.view(-1, 1, 1, 1)
    for index, style in enumerate(styles):
        chosen = choice == index
        rgb[chosen] = _piecewise(rgb[chosen], style.curve)

    rows = torch.arange(size, dtype=torch.float32).view(1, 1, size, 1)
    phase = torch.rand(n, 1, 1, 1, generator=style_gen) * 2 * math.pi
    stripes = torch.sin(2 * math.pi * rows / (_STRIPE_PERIOD * scale) + phase)
    rgb = rgb + value["stripes"].view(-1, 1, 1, 1) * stripes
    noise = value["noise"] * _lognormal(style_gen, (n,), 0.3 * jitter)
    rgb = rgb + noise.view(-1, 1, 1, 1) * torch.randn(rgb.shape, generator=style_gen)
    return rgb.clamp(0, 1).float(), content["mask"]


# --------------------------------------------------------------------------------------
# synthetic-prostate
# --------------------------------------------------------------------------------------

_APEX_TO_BASE = 0.85  # centre slices are drawn in |z| <= this (1: the gland's tip)


def _ellipse(x: torch.Tensor, y: torch.Tensor, cx, cy, ax, ay, softness: float) -> torch.Tensor:
    """Soft indicator of the ellipse with centre (cx, cy) and semi-axes (ax, ay)."""
    rho = torch.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return torch.sigmoid((1 - rho) / softness)


def _prostate_content(
    gen: torch.Generator,
    n: int,
    size: int,
    magnification: float,
    thickness: float,
    zones: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared label process, seen with one site's field of view and slice thickness.

    The gland is the set ``ρ(p) < R(p / |p|)`` with ``ρ`` the ellipsoidal radius of the
    point ``p`` (random centre, size and in-plane rotation) and ``R(u) = 1 + w·u + uᵀQu``
    a smooth random radius over directions; axial positions are in units of the
    cranio-caudal semi-axis. The centre slice lies anywhere from apex to base, so small
    cross-sections are common; the other two slices lie ``thickness`` above and below,
    and the gland's edge softens with the thickness (through-plane partial volume).
    Around it: T2-like periprostatic fat, obturator muscles, rectum, seminal vesicles on
    basal slices and the bladder on cranial ones. The random draws do not depend on the
    site.

    Returns:
        ``image`` float32 ``[n, 3, S, S]`` (T2-like signal, about [0, 1]), ``mask``
        int64 ``[n, S, S]`` (centre slice: 1 the gland; with ``zones``, 1 its peripheral
        zone, where the posterior shell ``peripheral`` exceeds 0.5, and 2 its transition
        zone) and ``rectum`` (``x``, ``y``), each ``[n, 1, 1, 1]``: the rectum's centre,
        where an endorectal coil sits. The zones draw nothing random: the image is the
        same either way.
    """
    coords = ((torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1) / magnification
    y = coords.view(1, 1, size, 1)
    x = coords.view(1, 1, 1, size)
    column = (n, 1, 1, 1)

    centre_x = 0.1 * torch.randn(column, generator=gen)
    centre_y = -0.05 + 0.1 * torch.randn(column, generator=gen)
    semi_x = _uniform(gen, column, 0.24, 0.5)
    semi_y = semi_x * _uniform(gen, column, 0.65, 0.85)
    rotation = 0.2 * torch.randn(column, generator=gen)
    linear = 0.08 * torch.randn(n, 3, generator=gen)
    quadratic = 0.06 * torch.randn(n, 3, 3, generator=gen)
    quadratic = (quadratic + quadratic.transpose(1, 2)) / 2
    centre_z = _uniform(gen, column, -_APEX_TO_BASE, _APEX_TO_BASE)
    gland_texture = _random_field(gen, (n, 1, size, size), 0.025 * size)
    nodules = _random_field(gen, (n, 1, size, size), 0.06 * size)
    tissue = _random_field(gen, (n, 1, size, size), 0.08 * size)
    fat_field = _random_field(gen, (n, 1, size, size), 0.06 * size)
    muscle_gap = _uniform(gen, column, 0.62, 0.8)
    rectum_gap = _uniform(gen, column, 0.08, 0.18)

    z = centre_z + thickness * torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    cos, sin = rotation.cos(), rotation.sin()
    px = ((x - centre_x) * cos + (y - centre_y) * sin) / semi_x
    py = (-(x - centre_x) * sin + (y - centre_y) * cos) / semi_y
    px, py, pz = torch.broadcast_tensors(px, py, z)  # [n, slices, S, S]
    rho = torch.sqrt(px**2 + py**2 + pz**2)
    direction = torch.stack([px, py, pz]) / rho.clamp(min=1e-6)
    outline = (
        1
        + torch.einsum("cnshw,nc->nshw", direction, linear)
        + torch.einsum("cnshw,ncd,dnshw->nshw", direction, quadratic, direction)
    )
    radial = rho / outline  # < 1 inside the gland
    gland = torch.sigmoid((1 - radial) / (0.04 + 0.3 * thickness))

    # Peripheral zone: the posterior outer shell, brighter than the transition zone, whose
    # hyperplasia nodules make the central gland as dark as muscle in places.
    peripheral = torch.sigmoid((radial - 0.6) / 0.06) * torch.sigmoid(py / 0.3)
    gland_intensity = 0.34 + 0.26 * peripheral + 0.05 * gland_texture - 0.08 * nodules
    capsule = 0.12 * torch.exp(-(((radial - 1) / 0.07) ** 2))

    rectum_y = centre_y + semi_y + rectum_gap + 0.15
    fat = torch.sigmoid((fat_field + 0.3) / 0.4)
    background = 0.4 + 0.06 * tissue + 0.25 * fat
    muscles = _ellipse(x, y, centre_x - muscle_gap, 0.05, 0.2, 0.55, 0.1) + _ellipse(
        x, y, centre_x + muscle_gap, 0.05, 0.2, 0.55, 0.1
    )
    background = background * (1 - 0.5 * muscles.clamp(max=1))
    rectum = _ellipse(x, y, centre_x, rectum_y, 0.24, 0.15, 0.08)
    background = background * (1 - 0.55 * rectum)
    # Seminal vesicles: bright paired structures behind the base of the gland.
    vesicle_y = centre_y + 0.6 * semi_y
    vesicles = sum(
        _ellipse(x, y, centre_x + side * 0.55 * semi_x, vesicle_y, 0.3 * semi_x, 0.12, 0.1)
        for side in (-1, 1)
    )
    vesicles = vesicles.clamp(max=1) * torch.sigmoid((z - 0.45) / 0.1)
    background = background + (0.75 - background) * vesicles
    # The bladder shows on cranial slices only: its size grows with the slice position.
    bladder_radius = 0.15 + 0.35 * torch.sigmoid(3 * z)
    bladder = _ellipse(
        x, y, centre_x, centre_y - semi_y - 0.35, 1.4 * bladder_radius, bladder_radius, 0.05
    )
    background = background + (0.9 - background) * bladder * torch.sigmoid(4 * z)

    image = background * (1 - gland) + gland_intensity * gland - capsule
    mask = (radial[:, 1] < 1).long()
    if zones:
        mask = mask * torch.where(peripheral[:, 1] > 0.5, 1, 2)
    return image.clamp(min=0), mask, (centre_x, rectum_y)


def _render_prostate(
    content_gen: torch.Generator,
    style_gen: torch.Generator,
    n: int,
    size: int,
    site: Site,
    reference: torch.Tensor,
    zones: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Acquire ``n`` 3-slice images of one site.

    Each image draws a sub-style and its own style around it. The anatomy is multiplied
    by a bias field (a smooth random log-field plus the coil hot spot around the
    rectum), averaged down to the acquisition grid (coarser along the phase-encoding
    axis where the site is anisotropic), given Rician noise ``|I + σ(n₁ + i n₂)|``,
    upsampled bilinearly; then the N/2 ghost, the FDA blend with the site reference, the
    gain and window, the gamma and the site curve. ``zones``: the mask tells the gland's
    zones apart (:func:`_prostate_content`).
    """
    image, mask, (rectum_x, rectum_y) = _prostate_content(
        content_gen, n, size, site.magnification, site.slice_thickness, zones
    )
    styles = site.styles
    choice = _choose(style_gen, n, site)
    jitter = _per_image(styles, choice, "jitter").view(-1, 1, 1, 1)
    coords = ((torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1) / site.magnification
    y, x = coords.view(1, 1, size, 1), coords.view(1, 1, 1, size)
    bias = _per_image(styles, choice, "bias").view(-1, 1, 1, 1)
    log_bias = bias * _random_field(style_gen, (n, 1, size, size), 0.35 * size)
    coil = _per_image(styles, choice, "coil").view(-1, 1, 1, 1)
    image = (
        image
        * torch.exp(log_bias)
        * (1 + coil * torch.exp(-((x - rectum_x) ** 2 + (y - rectum_y) ** 2) / 0.15))
    )

    noise = _per_image(styles, choice, "noise").view(-1, 1, 1, 1)
    noise = noise * _lognormal(style_gen, (n, 1, 1, 1), 0.3 * jitter)
    out = torch.empty_like(image)
    for index, style in enumerate(styles):
        chosen = choice == index
        if not chosen.any():
            continue
        width = round(size / style.resolution)
        height = round(size / (style.resolution * style.blur_anisotropy))
        low = F.interpolate(image[chosen], size=(height, width), mode="area")
        real, imaginary = noise[chosen] * torch.randn((2, *low.shape), generator=style_gen)
        low = torch.sqrt((low + real) ** 2 + imaginary**2)
        out[chosen] = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    image = out

    ghost = _per_image(styles, choice, "ghost").view(-1, 1, 1, 1)
    image = image + ghost * torch.roll(image, size // 2, dims=-2)
    fda = _per_image(styles, choice, "fda") * _lognormal(style_gen, (n,), 0.3 * jitter.view(-1))
    image = _fda(image, reference[:1].expand(3, -1, -1), fda.clamp(max=1).view(-1, 1, 1, 1))

    # Scanners rescale intensities differently from one exam to the next.
    gain = _lognormal(style_gen, (n, 1, 1, 1), 0.12 * jitter)
    window = _per_image(styles, choice, "window").view(-1, 2, 1, 1)
    low_level = window[:, :1] + 0.05 * jitter * torch.randn(n, 1, 1, 1, generator=style_gen)
    high_level = window[:, 1:]
    gamma = _per_image(styles, choice, "gamma").view(-1, 1, 1, 1)
    gamma = gamma * _lognormal(style_gen, (n, 1, 1, 1), 0.15 * jitter)
    image = ((gain * image - low_level) / (high_level - low_level)).clamp(0, 1) ** gamma
    for index, style in enumerate(styles):
        chosen = choice == index
        image[chosen] = _piecewise(image[chosen], style.curve)
    return image.float(), mask


_GENERATORS = {
    "synthetic-nuclei": _render_nuclei,
    "synthetic-prostate": _render_prostate,
    "synthetic-prostate-zones": partial(_render_prostate, zones=True),
}
