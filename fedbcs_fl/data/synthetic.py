"""The embedded multi-site benchmarks: same labels everywhere, a different style per site.

Real medical images cannot ship with the package, so the default experiments run on data
generated here, deterministically from a seed, with no downloads and no files. Each data
set reproduces the problem FedBCS addresses (paper Sec. 1): every site draws its images
and masks from one shared content process, so the label distribution is identical, and
only the rendering (the "style" a scanner or a staining protocol imposes) differs.

``synthetic-nuclei`` (4 sites, RGB)
    Many small, irregular elliptical nuclei on textured tissue, rendered with the
    Beer-Lambert law from hematoxylin and eosin densities. Per site: the stain matrix and
    illuminant, stain strength, background texture, a low-frequency amplitude-spectrum
    profile per channel (phase and mean kept), blur, intensity curve (gamma) and noise.
``synthetic-prostate`` (6 sites, 3 slices)
    Three adjacent axial slices of a smooth 3-D gland with T2-like anatomy around it
    (fat, muscles, rectum, bladder); the mask is the gland in the centre slice. Per site:
    slice spacing, bias field (and an endorectal-coil hot spot on two sites), acquisition
    resolution, Rician noise and intensity curve (window and gamma).

Layout: the site style tables, the public :func:`make_synthetic`, then the shared
frequency-domain helpers, and per data set its content process and its renderer.

Example:
    >>> sites = make_synthetic("synthetic-nuclei", seed=0, n_train=4, n_test=2)
    >>> [site.name for site in sites]
    ['site-A', 'site-B', 'site-C', 'site-D']
    >>> image, mask = sites[0].train[0]
    >>> tuple(image.shape), image.dtype, tuple(mask.shape), mask.dtype
    ((3, 64, 64), torch.float32, (64, 64), torch.int64)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .base import SiteData

__all__ = ["SYNTHETIC_SITES", "make_synthetic"]


@dataclass(frozen=True)
class NucleiStyle:
    """How one histology site renders the shared nuclei content.

    Attributes:
        haematoxylin: optical density per unit of hematoxylin, RGB (unit vector).
        eosin: optical density per unit of eosin, RGB (unit vector).
        illuminant: transmitted light of the empty slide, RGB in (0, 1].
        haematoxylin_strength: scale of the hematoxylin density (stain uptake).
        eosin_strength: scale of the eosin density.
        texture_scale: correlation length of the tissue texture along its fibres, in
            pixels of a 64-pixel image.
        texture_anisotropy: fibre length over fibre width (1 is isotropic).
        texture_angle: fibre direction in radians.
        texture_contrast: relative amplitude of the tissue texture in the eosin density.
        spectrum_gain: per-channel gain of the low spatial frequencies (amplitude spectrum
            multiplied by ``1 + gain · exp(-(f / f0)²)``, DC and phase kept).
        blur: Gaussian blur sigma in pixels of a 64-pixel image.
        gamma: intensity curve ``I ↦ I^gamma`` after rendering.
        noise: standard deviation of the additive Gaussian noise.
    """

    haematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    illuminant: tuple[float, float, float]
    haematoxylin_strength: float
    eosin_strength: float
    texture_scale: float
    texture_anisotropy: float
    texture_angle: float
    texture_contrast: float
    spectrum_gain: tuple[float, float, float]
    blur: float
    gamma: float
    noise: float


@dataclass(frozen=True)
class ProstateStyle:
    """How one MRI site acquires the shared prostate content.

    Attributes:
        slice_spacing: distance between adjacent slices, in units of the gland's
            cranio-caudal semi-axis.
        bias: amplitude of the smooth multiplicative bias field (log scale).
        coil: peak gain of the endorectal-coil hot spot behind the gland (0: no coil).
        resolution: acquisition pixel size over the output pixel size (1: full
            resolution; the image is acquired at ``size / resolution`` and upsampled).
        noise: Rician noise sigma at the acquisition resolution.
        window: intensity window ``(low, high)`` mapped to [0, 1] before the gamma.
        gamma: intensity curve exponent applied after the window.
    """

    slice_spacing: float
    bias: float
    coil: float
    resolution: float
    noise: float
    window: tuple[float, float]
    gamma: float


_NUCLEI_STYLES: dict[str, NucleiStyle] = {
    # Textbook H&E, sharp scan, fine isotropic stroma.
    "site-A": NucleiStyle(
        haematoxylin=(0.65, 0.70, 0.29),
        eosin=(0.07, 0.99, 0.11),
        illuminant=(0.96, 0.94, 0.96),
        haematoxylin_strength=1.0,
        eosin_strength=0.55,
        texture_scale=1.5,
        texture_anisotropy=1.0,
        texture_angle=0.0,
        texture_contrast=0.35,
        spectrum_gain=(0.0, 0.0, 0.0),
        blur=0.4,
        gamma=1.0,
        noise=0.015,
    ),
    # Over-stained, purple, darker curve, coarse blotchy stroma, boosted red low frequencies.
    "site-B": NucleiStyle(
        haematoxylin=(0.55, 0.76, 0.34),
        eosin=(0.28, 0.90, 0.33),
        illuminant=(0.93, 0.90, 0.95),
        haematoxylin_strength=1.35,
        eosin_strength=0.85,
        texture_scale=5.0,
        texture_anisotropy=1.0,
        texture_angle=0.0,
        texture_contrast=0.3,
        spectrum_gain=(0.8, 0.3, 0.3),
        blur=0.7,
        gamma=1.3,
        noise=0.02,
    ),
    # Faded pink, slightly out of focus, fibrous stroma, flattened low frequencies.
    "site-C": NucleiStyle(
        haematoxylin=(0.72, 0.64, 0.27),
        eosin=(0.03, 0.85, 0.52),
        illuminant=(0.98, 0.97, 0.97),
        haematoxylin_strength=0.85,
        eosin_strength=0.45,
        texture_scale=6.0,
        texture_anisotropy=6.0,
        texture_angle=0.5,
        texture_contrast=0.55,
        spectrum_gain=(-0.5, -0.5, -0.5),
        blur=1.1,
        gamma=0.8,
        noise=0.01,
    ),
    # Blue-grey nuclei on orange stroma, grainy sensor, strong blue low frequencies.
    "site-D": NucleiStyle(
        haematoxylin=(0.80, 0.55, 0.23),
        eosin=(0.05, 0.55, 0.83),
        illuminant=(0.92, 0.95, 0.98),
        haematoxylin_strength=1.1,
        eosin_strength=0.6,
        texture_scale=2.5,
        texture_anisotropy=2.0,
        texture_angle=-1.0,
        texture_contrast=0.4,
        spectrum_gain=(0.2, 0.4, 1.5),
        blur=0.2,
        gamma=1.1,
        noise=0.045,
    ),
}

_PROSTATE_STYLES: dict[str, ProstateStyle] = {
    # Endorectal coil: bright posterior hot spot, sharp, moderately noisy.
    "site-A": ProstateStyle(
        slice_spacing=0.15,
        bias=0.25,
        coil=1.2,
        resolution=1.0,
        noise=0.04,
        window=(0.0, 1.2),
        gamma=1.0,
    ),
    # Endorectal coil, lower resolution, bright curve.
    "site-B": ProstateStyle(
        slice_spacing=0.25,
        bias=0.2,
        coil=0.8,
        resolution=1.6,
        noise=0.03,
        window=(0.05, 1.0),
        gamma=0.75,
    ),
    # Body coil, thick slices, dark high-contrast curve.
    "site-C": ProstateStyle(
        slice_spacing=0.4,
        bias=0.35,
        coil=0.0,
        resolution=1.0,
        noise=0.02,
        window=(0.1, 0.95),
        gamma=1.5,
    ),
    # Low resolution and strong noise (1.5 T-like).
    "site-D": ProstateStyle(
        slice_spacing=0.3,
        bias=0.3,
        coil=0.0,
        resolution=2.0,
        noise=0.055,
        window=(0.0, 1.0),
        gamma=1.0,
    ),
    # Strong bias field, flat washed-out window.
    "site-E": ProstateStyle(
        slice_spacing=0.2,
        bias=0.4,
        coil=0.0,
        resolution=1.3,
        noise=0.03,
        window=(-0.3, 1.3),
        gamma=0.85,
    ),
    # Clean, high resolution, thin slices, bright window.
    "site-F": ProstateStyle(
        slice_spacing=0.12,
        bias=0.15,
        coil=0.0,
        resolution=1.0,
        noise=0.012,
        window=(0.0, 0.9),
        gamma=1.1,
    ),
}

SYNTHETIC_SITES: dict[str, list[str]] = {
    "synthetic-nuclei": list(_NUCLEI_STYLES),
    "synthetic-prostate": list(_PROSTATE_STYLES),
}
"""Site names of each synthetic data set, in their canonical order."""

# Content is drawn at this reference size; other image sizes show the same scene at a
# finer or coarser resolution, so the label distribution does not depend on the size.
_REFERENCE_SIZE = 64
_MIN_IMAGE_SIZE = 32
_SPLITS = ("train", "test")


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
    anatomy) and one for the style noise, so a site's data does not depend on which other
    sites are requested, and train and test are independent draws.

    Args:
        name: ``"synthetic-nuclei"`` or ``"synthetic-prostate"`` (see ``SYNTHETIC_SITES``).
        seed: non-negative integer; the same seed gives identical tensors. Default 0.
        n_train: training images per site. Default 24.
        n_test: test images per site. Default 12.
        image_size: height and width in pixels, at least 32. Default 64.
        sites: names of the sites to generate, in the order wanted; ``None`` (default)
            generates all sites of the data set in canonical order.

    Returns:
        One :class:`SiteData` per site, whose ``train`` and ``test`` are
        ``TensorDataset(images, masks)``: images float32 ``[N, 3, S, S]`` in [0, 1],
        masks int64 ``[N, S, S]`` with 0 background and 1 foreground.

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

    styles, generate = _GENERATORS[name]
    dataset_index = list(SYNTHETIC_SITES).index(name)
    result = []
    for site in sites:
        site_index = valid_sites.index(site)
        splits = {}
        for split_index, (split, count) in enumerate(zip(_SPLITS, (n_train, n_test), strict=True)):
            content_gen, style_gen = (
                _generator(seed, dataset_index, site_index, split_index, stream)
                for stream in range(2)
            )
            images, masks = generate(content_gen, style_gen, count, image_size, styles[site])
            splits[split] = TensorDataset(images, masks)
        result.append(SiteData(name=site, **splits))
    return result


# --------------------------------------------------------------------------------------
# Shared helpers: seeding and frequency-domain filters
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


# --------------------------------------------------------------------------------------
# synthetic-nuclei
# --------------------------------------------------------------------------------------

_NUCLEI_MEAN_COUNT = 22.0  # nuclei per image
_NUCLEI_MAX_COUNT = 48
_NUCLEUS_RADIUS = (2.3, 4.0)  # mean semi-axis range, reference pixels
_NUCLEUS_ELONGATION = (1.0, 1.8)  # long over short axis
_NUCLEUS_WOBBLE = 0.08  # std of the 2nd and 3rd harmonic of the outline radius
_SPECTRUM_CUTOFF = 6.0  # f0 of the spectrum profile, cycles per image


def _nuclei_content(gen: torch.Generator, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared label process: nuclei masks and their hematoxylin density.

    Each image has a Poisson number of nuclei at uniform positions; a nucleus is an
    ellipse with a random size, elongation and orientation whose outline radius is
    perturbed by random 2nd and 3rd harmonics. Nuclei are rasterised in small patches and
    merged with a scatter-max of their signed distance.

    Returns:
        ``mask`` int64 ``[n, S, S]`` and ``density`` float32 ``[n, S, S]`` (about 1 inside
        nuclei, 0 outside, with chromatin texture and soft edges).
    """
    scale = size / _REFERENCE_SIZE
    k = _NUCLEI_MAX_COUNT
    count = torch.poisson(torch.full((n, 1), _NUCLEI_MEAN_COUNT), generator=gen)
    active = torch.arange(k) < count  # [n, k]
    centre = torch.rand(n, k, 2, generator=gen) * size
    radius = _uniform(gen, (n, k), *_NUCLEUS_RADIUS) * scale
    elongation = _uniform(gen, (n, k), *_NUCLEUS_ELONGATION).sqrt()
    angle = torch.rand(n, k, generator=gen) * math.pi
    harmonics = (_NUCLEUS_WOBBLE * torch.randn(n, k, 2, generator=gen)).clamp(-0.2, 0.2)
    phase = torch.rand(n, k, 2, generator=gen) * 2 * math.pi
    darkness = _uniform(gen, (n, k), 0.75, 1.15)
    chromatin = _random_field(gen, (n, size, size), 0.6 * scale)

    # Patch large enough for the longest semi-axis with the largest perturbation.
    half = math.ceil(_NUCLEUS_RADIUS[1] * math.sqrt(_NUCLEUS_ELONGATION[1]) * 1.4 * scale)
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    py = centre[..., 0, None, None].floor() + offsets[:, None]  # [n, k, P, 1]
    px = centre[..., 1, None, None].floor() + offsets[None, :]  # [n, k, 1, P]
    dy = py + 0.5 - centre[..., 0, None, None]
    dx = px + 0.5 - centre[..., 1, None, None]
    cos, sin = angle.cos()[..., None, None], angle.sin()[..., None, None]
    long_axis = (radius * elongation)[..., None, None]
    short_axis = (radius / elongation)[..., None, None]
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
    edge = torch.sigmoid(distance / (0.5 * scale))
    best = torch.full((n * size * size,), -1e3).scatter_reduce(0, index, distance, "amax")
    weighted = darkness[..., None, None].expand_as(valid).reshape(-1) * edge
    density = torch.zeros(n * size * size).scatter_reduce(0, index, weighted, "amax")
    mask = (best > 0).long().view(n, size, size)
    density = density.view(n, size, size) * (1 + 0.2 * chromatin)
    return mask, density.clamp(min=0)


def _render_nuclei(
    content_gen: torch.Generator,
    style_gen: torch.Generator,
    n: int,
    size: int,
    style: NucleiStyle,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``n`` nuclei images of one site: Beer-Lambert H&E, then the site's optics.

    ``OD = h · H + e · E`` with hematoxylin density ``h`` (nuclei plus a faint background)
    and eosin density ``e`` (textured stroma, displaced by nuclei); ``RGB = I0 · exp(-OD)``;
    then the amplitude-spectrum profile and the blur (one zero-phase filter), the gamma
    curve and the noise.
    """
    mask, nuclei = _nuclei_content(content_gen, n, size)
    scale = size / _REFERENCE_SIZE
    texture = _random_field(
        style_gen,
        (n, size, size),
        style.texture_scale * scale,
        style.texture_anisotropy,
        style.texture_angle,
    )
    # Stain uptake varies a little from slide to slide within a site.
    uptake = torch.exp(0.1 * torch.randn(n, 2, 1, 1, generator=style_gen))
    haematoxylin = style.haematoxylin_strength * uptake[:, 0] * (nuclei + 0.08 + 0.04 * texture)
    eosin = (
        style.eosin_strength
        * uptake[:, 1]
        * (1 + style.texture_contrast * texture).clamp(min=0.05)
        * (1 - 0.6 * nuclei.clamp(max=1))
    )
    stains = torch.tensor([style.haematoxylin, style.eosin])  # [2, 3]
    density = torch.stack([haematoxylin, eosin], dim=1)  # [n, 2, S, S]
    optical_density = torch.einsum("nkhw,kc->nchw", density, stains)
    rgb = torch.tensor(style.illuminant)[:, None, None] * torch.exp(-optical_density)

    fy, fx = _frequencies(size)
    cycles_per_image = torch.sqrt(fy**2 + fx**2) * size
    low = torch.exp(-((cycles_per_image / _SPECTRUM_CUTOFF) ** 2))
    low[0, 0] = 0  # keep each channel's mean
    profile = 1 + torch.tensor(style.spectrum_gain)[:, None, None] * low  # [3, S, S]
    rgb = _filter(rgb, profile * _gaussian_transfer(size, style.blur * scale))

    rgb = rgb.clamp(1e-4, 1) ** style.gamma
    rgb = rgb + style.noise * torch.randn(rgb.shape, generator=style_gen)
    return rgb.clamp(0, 1).float(), mask


# --------------------------------------------------------------------------------------
# synthetic-prostate
# --------------------------------------------------------------------------------------


def _ellipse(x: torch.Tensor, y: torch.Tensor, cx, cy, ax, ay, softness: float) -> torch.Tensor:
    """Soft indicator of the ellipse with centre (cx, cy) and semi-axes (ax, ay)."""
    rho = torch.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return torch.sigmoid((1 - rho) / softness)


def _prostate_content(
    gen: torch.Generator, n: int, size: int, slice_spacing: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared label process: a 3-D gland and the anatomy around it.

    The gland is the set ``ρ(p) < R(p / |p|)`` with ``ρ`` the ellipsoidal radius of the
    point ``p`` (random centre, semi-axes and in-plane rotation) and ``R(u) = 1 + w·u +
    uᵀQu`` a smooth random radius over directions; axial positions are in units of the
    cranio-caudal semi-axis. A random axial position is the centre slice (always cutting
    the gland); the other two slices lie ``slice_spacing`` above and below. Around
    it: T2-like periprostatic fat, obturator muscles, rectum and, on cranial slices, the
    bladder. The random draws do not depend on ``slice_spacing``.

    Returns:
        ``image`` float32 ``[n, 3, S, S]`` (T2-like signal, about [0, 1]), ``mask``
        int64 ``[n, S, S]`` (centre slice) and ``rectum_y`` ``[n, 1, 1, 1]`` (the rectum's
        vertical position, where an endorectal coil sits).
    """
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y = coords.view(1, 1, size, 1)
    x = coords.view(1, 1, 1, size)
    column = (n, 1, 1, 1)

    centre_x = 0.05 * torch.randn(column, generator=gen)
    centre_y = -0.05 + 0.06 * torch.randn(column, generator=gen)
    semi_x = _uniform(gen, column, 0.36, 0.50)
    semi_y = _uniform(gen, column, 0.26, 0.38)
    rotation = 0.15 * torch.randn(column, generator=gen)
    linear = 0.08 * torch.randn(n, 3, generator=gen)
    quadratic = 0.06 * torch.randn(n, 3, 3, generator=gen)
    quadratic = (quadratic + quadratic.transpose(1, 2)) / 2
    centre_z = _uniform(gen, column, -0.6, 0.6)
    gland_texture = _random_field(gen, (n, 1, size, size), 0.025 * size)
    tissue = _random_field(gen, (n, 1, size, size), 0.08 * size)
    fat_field = _random_field(gen, (n, 1, size, size), 0.06 * size)
    muscle_gap = _uniform(gen, column, 0.72, 0.85)
    rectum_gap = _uniform(gen, column, 0.12, 0.2)

    z = centre_z + slice_spacing * torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
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
    gland = torch.sigmoid((1 - radial) / 0.04)

    # Peripheral zone: the posterior outer shell, brighter than the central gland.
    peripheral = torch.sigmoid((radial - 0.6) / 0.06) * torch.sigmoid(py / 0.3)
    gland_intensity = 0.38 + 0.26 * peripheral + 0.05 * gland_texture
    capsule = 0.15 * torch.exp(-(((radial - 1) / 0.07) ** 2))

    rectum_y = centre_y + semi_y + rectum_gap + 0.17
    fat = torch.sigmoid((fat_field + 0.3) / 0.4)
    background = 0.4 + 0.05 * tissue + 0.25 * fat
    muscles = _ellipse(x, y, -muscle_gap, 0.05, 0.22, 0.55, 0.1) + _ellipse(
        x, y, muscle_gap, 0.05, 0.22, 0.55, 0.1
    )
    background = background * (1 - 0.55 * muscles.clamp(max=1))
    rectum = _ellipse(x, y, centre_x, rectum_y, 0.26, 0.17, 0.08)
    background = background * (1 - 0.6 * rectum)
    # The bladder shows on cranial slices only: its size grows with the slice position.
    bladder_radius = 0.15 + 0.35 * torch.sigmoid(3 * z)
    bladder = _ellipse(
        x, y, centre_x, centre_y - semi_y - 0.35, 1.4 * bladder_radius, bladder_radius, 0.05
    )
    background = background + (0.9 - background) * bladder * torch.sigmoid(4 * z)

    image = background * (1 - gland) + gland_intensity * gland - capsule
    mask = (radial[:, 1] < 1).long()
    return image.clamp(min=0), mask, rectum_y


def _render_prostate(
    content_gen: torch.Generator,
    style_gen: torch.Generator,
    n: int,
    size: int,
    style: ProstateStyle,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Acquire ``n`` 3-slice images of one site.

    The anatomy is multiplied by the bias field (a smooth random log-field plus the coil
    hot spot around the rectum), averaged down to the acquisition resolution, given
    Rician noise ``|I + σ(n₁ + i n₂)|``, upsampled bilinearly, then windowed and passed
    through the gamma curve.
    """
    image, mask, rectum_y = _prostate_content(content_gen, n, size, style.slice_spacing)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = coords.view(1, 1, size, 1), coords.view(1, 1, 1, size)
    log_bias = style.bias * _random_field(style_gen, (n, 1, size, size), 0.35 * size)
    coil = style.coil * torch.exp(-(x**2 + (y - rectum_y) ** 2) / 0.15)
    image = image * torch.exp(log_bias) * (1 + coil)

    acquired = round(size / style.resolution)
    low = F.interpolate(image, size=(acquired, acquired), mode="area")
    real, imaginary = style.noise * torch.randn((2, *low.shape), generator=style_gen)
    low = torch.sqrt((low + real) ** 2 + imaginary**2)
    image = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)

    # Scanners rescale intensities differently from one exam to the next.
    gain = torch.exp(0.08 * torch.randn(n, 1, 1, 1, generator=style_gen))
    low_level, high_level = style.window
    image = ((gain * image - low_level) / (high_level - low_level)).clamp(0, 1) ** style.gamma
    return image.float(), mask


_GENERATORS = {
    "synthetic-nuclei": (_NUCLEI_STYLES, _render_nuclei),
    "synthetic-prostate": (_PROSTATE_STYLES, _render_prostate),
}
