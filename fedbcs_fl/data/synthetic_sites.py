"""The synthetic data sets' sites, each one's share of the images and its style, and the
version of each set's generator: what :mod:`~fedbcs_fl.data.synthetic` draws, declared
apart from the drawing in a module that imports no torch, so that the data sources
(:mod:`~fedbcs_fl.data.sources`) are known to ``fedbcs --help`` without it (issue 18).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SYNTHETIC_VERSION: dict[str, int] = {
    "synthetic-nuclei": 2,
    "synthetic-prostate": 3,
    "synthetic-prostate-zones": 1,
}
"""Version of each data set's generator; a run's ``config.json`` records it
(``data_version``). Version 3 of synthetic-prostate darkens site-D's protocol and centres
the endorectal coil's hot spot on the rectum (docs/data.md). Version 1 of
synthetic-prostate-zones labels the zones of synthetic-prostate version 3."""

# A monotone piecewise-linear intensity curve: output levels at equally spaced inputs
# 0, 1/(K-1), ..., 1. Levels that reach 1 early clip the highlights; a first level above 0
# lifts the blacks.
Curve = tuple[float, ...]
_IDENTITY: Curve = (0.0, 1.0)


@dataclass(frozen=True)
class NucleiStyle:
    """How one histology scanner and staining protocol renders the shared content.

    Per-image draws scale with ``jitter``: each image gets its own stain vectors, stain
    strengths, channel gains and offsets, gamma, blur and noise around these means.

    Attributes:
        haematoxylin: optical density per unit of hematoxylin, RGB (unit vector).
        eosin: optical density per unit of eosin, RGB (unit vector).
        illuminant: transmitted light of the empty slide, RGB in (0, 1].
        haematoxylin_strength: scale of the hematoxylin density (stain uptake).
        eosin_strength: scale of the eosin density.
        texture_scale: correlation length of the stroma texture along its fibres, in
            reference pixels.
        texture_anisotropy: fibre length over fibre width (1 is isotropic).
        texture_angle: fibre direction in radians.
        texture_contrast: relative amplitude of the stroma texture in the eosin density.
        blur: Gaussian MTF sigma along ``blur_angle``, reference pixels.
        blur_anisotropy: sigma along ``blur_angle`` over sigma across it.
        blur_angle: direction of the strongest blur, radians.
        sharpen: gain of the mid and high spatial frequencies (0: none; the scanner's
            sharpening filter).
        fda: weight of the site reference spectrum in each image's low-frequency
            amplitude (0: none, 1: replaced).
        curve: the site's intensity curve, applied per channel.
        gamma: exponent applied before the curve.
        stripes: amplitude of horizontal periodic stripes (0: none).
        noise: standard deviation of the additive sensor noise.
        jitter: spread of the per-image style around this mean (0: none).
    """

    haematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    illuminant: tuple[float, float, float]
    haematoxylin_strength: float
    eosin_strength: float
    texture_scale: float
    texture_contrast: float
    blur: float
    gamma: float
    noise: float
    jitter: float
    texture_anisotropy: float = 1.0
    texture_angle: float = 0.0
    blur_anisotropy: float = 1.0
    blur_angle: float = 0.0
    sharpen: float = 0.0
    fda: float = 0.0
    curve: Curve = _IDENTITY
    stripes: float = 0.0


@dataclass(frozen=True)
class ProstateStyle:
    """How one MRI scanner and protocol acquires the shared prostate content.

    Attributes:
        bias: amplitude of the smooth multiplicative bias field (log scale), drawn anew
            for every image.
        coil: peak gain of the endorectal-coil hot spot behind the gland (0: no coil).
        resolution: in-plane acquisition pixel size over the output pixel size (1: full
            resolution; the image is acquired at ``size / resolution`` and upsampled).
        blur_anisotropy: resolution along the phase-encoding (vertical) axis over that
            along the frequency-encoding axis (1: isotropic).
        fda: weight of the site reference spectrum in each image's low-frequency
            amplitude (0: none).
        ghost: amplitude of the N/2 ghost along the phase-encoding axis (0: none).
        noise: Rician noise sigma at the acquisition resolution.
        window: intensity window ``(low, high)`` mapped to [0, 1] before the gamma.
        gamma: exponent applied after the window.
        curve: the site's intensity curve after the gamma.
        jitter: spread of the per-image style (gain, window, gamma, noise) around this mean.
    """

    bias: float
    resolution: float
    noise: float
    window: tuple[float, float]
    gamma: float
    jitter: float
    coil: float = 0.0
    blur_anisotropy: float = 1.0
    fda: float = 0.0
    ghost: float = 0.0
    curve: Curve = _IDENTITY


@dataclass(frozen=True)
class Site:
    """One synthetic site: its acquisition geometry and its style(s).

    Attributes:
        size: share of ``n_train``: the site has ``round(size · n_train)`` training images
            (at least 2). The shares of a data set average 1.
        magnification: how large the content appears (nuclei size in pixels; the
            prostate's field of view is ``1 / magnification``).
        styles: one style, or two or three sub-styles the site pools (each image draws one
            with the probabilities ``mix``).
        mix: probability of each sub-style (``None``: equal).
        slice_thickness: prostate only: distance between adjacent slices and the through-
            plane partial volume, in units of the gland's cranio-caudal semi-axis.
    """

    size: float
    magnification: float
    styles: tuple
    mix: tuple[float, ...] | None = None
    slice_thickness: float = 0.0


# site-A pools three stainings of one scanner; the second and third differ from the first
# (textbook H&E) only where they say.
_TEXTBOOK = NucleiStyle(
    haematoxylin=(0.65, 0.70, 0.29),
    eosin=(0.07, 0.99, 0.11),
    illuminant=(0.96, 0.94, 0.96),
    haematoxylin_strength=1.0,
    eosin_strength=0.55,
    texture_scale=1.5,
    texture_contrast=0.35,
    blur=0.5,
    curve=(0.0, 0.2, 0.5, 0.8, 1.0),
    gamma=1.0,
    noise=0.02,
    jitter=0.8,
)
_PURPLE = replace(
    _TEXTBOOK,
    haematoxylin=(0.55, 0.76, 0.34),
    eosin=(0.28, 0.90, 0.33),
    illuminant=(0.93, 0.90, 0.95),
    haematoxylin_strength=1.4,
    eosin_strength=0.9,
    texture_scale=3.0,
    texture_anisotropy=1.5,
    texture_angle=0.8,
    texture_contrast=0.3,
    blur=0.6,
    gamma=1.3,
)
_PALE = replace(
    _TEXTBOOK,
    haematoxylin=(0.72, 0.64, 0.27),
    eosin=(0.03, 0.85, 0.52),
    illuminant=(0.98, 0.97, 0.97),
    haematoxylin_strength=0.7,
    eosin_strength=0.4,
    texture_scale=2.0,
    texture_contrast=0.45,
    gamma=0.85,
)

_NUCLEI_SITES: dict[str, Site] = {
    # Pools three tumour types scanned on one scanner (TCIA-like): textbook, purple and
    # pale pink sub-styles; sharp; mild S-curve.
    "site-A": Site(
        size=1.5,
        magnification=1.0,
        styles=(_TEXTBOOK, _PURPLE, _PALE),
    ),
    # High magnification (large nuclei), over-stained under a yellowed mountant (olive
    # cast), blur along one axis, sharpened.
    "site-B": Site(
        size=0.75,
        magnification=1.7,
        styles=(
            NucleiStyle(
                haematoxylin=(0.45, 0.62, 0.64),
                eosin=(0.30, 0.85, 0.43),
                illuminant=(0.95, 0.9, 0.7),
                haematoxylin_strength=1.5,
                eosin_strength=1.0,
                texture_scale=5.0,
                texture_contrast=0.35,
                blur=1.3,
                blur_anisotropy=3.0,
                blur_angle=0.6,
                sharpen=0.8,
                fda=0.5,
                curve=(0.0, 0.35, 0.62, 0.82, 0.94, 1.0),
                gamma=1.4,
                noise=0.03,
                jitter=1.0,
            ),
        ),
    ),
    # Low magnification (small nuclei), faded, cyan hematoxylin, out of focus, highlights
    # clipped.
    "site-C": Site(
        size=0.5,
        magnification=0.7,
        styles=(
            NucleiStyle(
                haematoxylin=(0.86, 0.45, 0.24),
                eosin=(0.03, 0.85, 0.52),
                illuminant=(0.98, 0.97, 0.97),
                haematoxylin_strength=1.0,
                eosin_strength=0.45,
                texture_scale=6.0,
                texture_anisotropy=6.0,
                texture_angle=0.5,
                texture_contrast=0.55,
                blur=1.1,
                fda=0.7,
                curve=(0.0, 0.3, 0.58, 0.85, 1.0, 1.0),
                gamma=1.0,
                noise=0.02,
                jitter=1.2,
            ),
        ),
    ),
    # Blue-grey nuclei on orange stroma, grainy sensor with line stripes, lifted blacks.
    "site-D": Site(
        size=1.25,
        magnification=1.15,
        styles=(
            NucleiStyle(
                haematoxylin=(0.80, 0.55, 0.23),
                eosin=(0.05, 0.55, 0.83),
                illuminant=(0.92, 0.95, 0.98),
                haematoxylin_strength=1.1,
                eosin_strength=0.6,
                texture_scale=2.5,
                texture_anisotropy=2.0,
                texture_angle=-1.0,
                texture_contrast=0.4,
                blur=0.3,
                blur_anisotropy=1.5,
                blur_angle=1.5,
                sharpen=0.4,
                fda=0.8,
                curve=(0.15, 0.3, 0.55, 0.8, 1.0),
                gamma=1.1,
                stripes=0.05,
                noise=0.06,
                jitter=1.0,
            ),
        ),
    ),
}

# site-C pools two protocols: a T2 TSE, and a coarser, darker one with clipped highlights.
_TSE = ProstateStyle(
    bias=0.35, resolution=1.0, fda=0.3, noise=0.03, window=(0.1, 0.95), gamma=1.5, jitter=1.0
)
_TSE_DARK = replace(
    _TSE,
    resolution=1.3,
    noise=0.04,
    window=(0.15, 0.9),
    gamma=1.0,
    curve=(0.0, 0.1, 0.3, 0.7, 1.0, 1.0),
)

_PROSTATE_SITES: dict[str, Site] = {
    # 3 T with an endorectal coil: bright posterior hot spot, sharp, moderately noisy.
    "site-A": Site(
        size=1.25,
        magnification=1.0,
        slice_thickness=0.15,
        styles=(
            ProstateStyle(
                bias=0.25,
                coil=1.2,
                resolution=1.0,
                noise=0.04,
                window=(0.0, 1.2),
                gamma=1.0,
                jitter=0.8,
            ),
        ),
    ),
    # 1.5 T with an endorectal coil: low resolution, bright curve, noisy.
    "site-B": Site(
        size=1.0,
        magnification=1.2,
        slice_thickness=0.25,
        styles=(
            ProstateStyle(
                bias=0.2,
                coil=0.8,
                resolution=1.8,
                blur_anisotropy=1.5,
                fda=0.4,
                noise=0.06,
                window=(0.05, 1.0),
                gamma=0.75,
                curve=(0.0, 0.4, 0.7, 0.9, 1.0),
                jitter=1.0,
            ),
        ),
    ),
    # Body coil, thick slices, two protocols pooled (T2 TSE and a darker, clipped one).
    "site-C": Site(
        size=0.5,
        magnification=0.85,
        slice_thickness=0.4,
        styles=(_TSE, _TSE_DARK),
    ),
    # 1.5 T body coil: a third of the resolution, strongly anisotropic, strong noise, and
    # a dark protocol whose steep curve crushes the mid-grey tissue, set per exam, so its
    # images vary widely around the site's mean (version 3).
    "site-D": Site(
        size=1.5,
        magnification=0.9,
        slice_thickness=0.3,
        styles=(
            ProstateStyle(
                bias=0.3,
                resolution=3.0,
                blur_anisotropy=2.0,
                fda=0.5,
                noise=0.09,
                window=(0.0, 1.0),
                gamma=2.0,
                curve=(0.0, 0.02, 0.08, 0.3, 1.0),
                jitter=1.3,
            ),
        ),
    ),
    # Strong bias field, washed-out window, an N/2 ghost (periodic artefact).
    "site-E": Site(
        size=0.75,
        magnification=1.1,
        slice_thickness=0.2,
        styles=(
            ProstateStyle(
                bias=0.45,
                resolution=1.3,
                fda=0.6,
                ghost=0.25,
                noise=0.04,
                window=(-0.3, 1.3),
                gamma=0.85,
                curve=(0.0, 0.15, 0.5, 0.85, 1.0),
                jitter=1.2,
            ),
        ),
    ),
    # Clean, high resolution, thin slices, bright clipped window.
    "site-F": Site(
        size=1.0,
        magnification=1.0,
        slice_thickness=0.12,
        styles=(
            ProstateStyle(
                bias=0.15,
                resolution=1.0,
                fda=0.2,
                noise=0.015,
                window=(0.0, 0.8),
                gamma=1.1,
                curve=(0.0, 0.3, 0.6, 0.9, 1.0, 1.0),
                jitter=0.6,
            ),
        ),
    ),
}

SITES: dict[str, dict[str, Site]] = {
    "synthetic-nuclei": _NUCLEI_SITES,
    "synthetic-prostate": _PROSTATE_SITES,
    "synthetic-prostate-zones": _PROSTATE_SITES,
}
"""Each synthetic data set's sites by name, in their canonical order."""

SYNTHETIC_SITES: dict[str, list[str]] = {name: list(sites) for name, sites in SITES.items()}
"""Site names of each synthetic data set, in their canonical order."""

SITE_SIZES: dict[str, dict[str, float]] = {
    name: {site: spec.size for site, spec in sites.items()} for name, sites in SITES.items()
}
"""Each site's share of ``n_train`` (the shares of a data set average 1)."""
