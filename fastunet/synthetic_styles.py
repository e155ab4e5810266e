"""Named styles of synthetic nuclei images: parameter distributions of :func:`synthetic_nuclei`.

A :class:`Style` gives, for each option of :func:`fastunet.synthetic.synthetic_nuclei`, a range
from which every image draws its value: the typical nucleus diameter (log-uniformly), how
densely they cover the image, how many touch, their shapes, chromatin texture, bright bodies,
brightness spread, illumination, blur, noise and the file's bit depth. :func:`style_image`
draws one image of a style from a seed.

The styles come in two groups (:data:`STYLES`):

* **training styles** (``held_out=False``), which the default model's recipe draws
  (:mod:`fastunet.default_model`);
* **held-out styles** (``held_out=True``), which no training recipe draws: other size
  ranges (tiny, huge), other textures (speckled), other noise (low light) and other shapes
  (elongated).

The last five training styles carry what real images hold besides clean nuclei (debris,
specks, autofluorescence, vignetting, ghosts, saturation, mitoses, fragments, very low light,
the camera's defects; :mod:`fastunet.synthetic_clutter`, :mod:`fastunet.synthetic_optics`). ``fastunet evaluate --synthetic N`` scores a model on each style, so the
  held-out rows say how it does on data unlike anything it saw.

``classic`` is the generator's default (the images of earlier fastunet versions, seed for
seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .objectsize import median_diameter
from .synthetic import synthetic_image

__all__ = ["Style", "STYLES", "StyleImage", "style_names", "style_image", "get_style", "write_style_images", "glow",
           "DEGRADATIONS", "degrade"]

Range = tuple[float, float]


@dataclass(frozen=True)
class Style:
    """A distribution of synthetic images: each image draws its options from these ranges.

    ``diameter`` is the image's typical nucleus diameter in px (log-uniform); the nuclei's
    major axes then lie within ``1 +- spread`` of it. ``coverage`` is the fraction of the image
    the nuclei cover, ``photons`` is drawn log-uniformly, everything else uniformly, and the
    bit depth is one of ``dtypes``. ``fixed`` styles draw nothing: the generator's defaults.
    """

    name: str
    description: str
    held_out: bool = False
    fixed: bool = False
    diameter: Range = (12.0, 40.0)
    spread: float = 0.3
    aspect: Range = (1.0, 1.6)
    irregularity: Range = (0.0, 0.0)
    coverage: Range = (0.15, 0.35)
    touching: Range = (0.3, 0.6)
    dim_fraction: Range = (0.1, 0.2)
    brightness_sigma: Range = (0.25, 0.35)
    bodies: Range = (0.0, 0.0)
    texture: Range = (0.15, 0.3)
    grain: Range = (0.06, 0.1)  # chromatin grain as a fraction of the diameter
    foci: Range = (0.0, 0.0)
    nucleoli: Range = (0.0, 0.0)
    photons: Range = (150.0, 1500.0)
    background_level: Range = (0.03, 0.12)
    psf_sigma: Range = (1.0, 2.0)
    read_noise: Range = (2.0, 4.0)
    illumination: Range = (0.0, 0.0)
    haze: Range = (0.0, 0.0)
    dtypes: tuple[str, ...] = field(default=("uint16",))
    dim_level: Range = (0.15, 0.35)  # passed as it is: each dim nucleus draws from it
    mitoses: Range = (0.0, 0.0)
    fragments: Range = (0.0, 0.0)
    defocus: Range = (0.0, 0.0)
    autofluorescence: Range = (0.0, 0.0)
    cytoplasm: Range = (0.0, 0.0)
    ghosts: Range = (0.0, 0.0)
    debris: Range = (0.0, 0.0)
    fibers: Range = (0.0, 0.0)
    specks: Range = (0.0, 0.0)
    hot_pixels: Range = (0.0, 0.0)
    pattern_noise: Range = (0.0, 0.0)
    saturation: Range = (0.0, 0.0)


STYLES: dict[str, Style] = {s.name: s for s in (
    # --- drawn by the default model's training recipe ---------------------------------------
    Style("classic", "the generator's defaults: round-ish nuclei of 12-40 px, half of them in clusters",
          fixed=True),
    Style("small", "small round nuclei (9-16 px), crowded, dim to bright light, 8- and 16-bit",
          diameter=(9.0, 16.0), coverage=(0.2, 0.4), touching=(0.4, 0.7), psf_sigma=(0.8, 1.4),
          photons=(30.0, 1500.0), dtypes=("uint8", "uint16")),
    Style("textured", "irregular nuclei (18-45 px) with coarse chromatin, foci and nucleoli, 12-bit",
          diameter=(18.0, 45.0), aspect=(1.0, 1.8), irregularity=(0.05, 0.15), texture=(0.3, 0.55),
          grain=(0.05, 0.1), foci=(0.2, 0.8), nucleoli=(0.2, 0.6), photons=(300.0, 2500.0),
          dtypes=("uint12", "uint16")),
    Style("clumped", "dense touching clumps (12-30 px), dim nuclei next to bright ones",
          diameter=(12.0, 30.0), coverage=(0.35, 0.55), touching=(0.7, 0.9), dim_fraction=(0.2, 0.35),
          brightness_sigma=(0.4, 0.6), photons=(40.0, 1500.0), dtypes=("uint16", "float32")),
    Style("mitotic", "nuclei (14-32 px) among small bright mitotic and apoptotic bodies, 8- and 16-bit",
          diameter=(14.0, 32.0), bodies=(0.08, 0.2), dim_fraction=(0.2, 0.3), brightness_sigma=(0.4, 0.6),
          photons=(60.0, 1500.0), dtypes=("uint8", "uint16")),
    Style("widefield", "uneven illumination, out-of-focus haze, strong background and blur (14-40 px)",
          diameter=(14.0, 40.0), illumination=(0.3, 0.6), haze=(0.3, 0.8), background_level=(0.1, 0.3),
          psf_sigma=(1.5, 3.0), photons=(30.0, 800.0), dtypes=("float32", "uint16")),
    Style("large", "large irregular, elongated nuclei (35-60 px), 12- and 16-bit",
          diameter=(35.0, 60.0), aspect=(1.0, 2.0), irregularity=(0.05, 0.2), texture=(0.2, 0.4),
          nucleoli=(0.0, 0.3), psf_sigma=(1.5, 3.0), dtypes=("uint16", "uint12")),
    # what real images hold besides clean nuclei (synthetic_clutter, the camera's defects)
    Style("debris", "nuclei (12-36 px) among debris, fibers and bright specks; hot pixels, column pattern noise",
          diameter=(12.0, 36.0), debris=(0.3, 1.5), fibers=(0.05, 0.3), specks=(0.3, 2.0),
          hot_pixels=(1e-4, 2e-3), pattern_noise=(0.5, 3.0), photons=(50.0, 1500.0), dtypes=("uint8", "uint16")),
    Style("autofluorescent", "textured autofluorescent background and cytoplasm, vignetting, haze, "
          "out-of-focus and ghost nuclei (14-40 px)",
          diameter=(14.0, 40.0), autofluorescence=(0.03, 0.15), cytoplasm=(0.03, 0.15), ghosts=(0.2, 0.8),
          defocus=(0.05, 0.2), illumination=(0.2, 0.7), haze=(0.1, 0.4), background_level=(0.03, 0.15),
          photons=(40.0, 1500.0), dtypes=("uint16", "float32")),
    Style("saturated", "saturated bright nuclei beside very dim ones (14-36 px), 8- and 12-bit",
          diameter=(14.0, 36.0), saturation=(0.1, 0.4), dim_fraction=(0.2, 0.4), dim_level=(0.06, 0.25),
          brightness_sigma=(0.5, 0.8), photons=(100.0, 3000.0), dtypes=("uint8", "uint12")),
    Style("dividing", "mitotic figures, anaphase pairs and fragmented nuclei among irregular, lobed nuclei (16-40 px)",
          diameter=(16.0, 40.0), mitoses=(0.05, 0.2), fragments=(0.03, 0.1), bodies=(0.0, 0.1),
          irregularity=(0.05, 0.25), aspect=(1.0, 1.8), texture=(0.2, 0.45), dtypes=("uint16", "uint8")),
    Style("dim", "very low light (3-40 photons), strong read noise, hot pixels and pattern noise (12-40 px)",
          diameter=(12.0, 40.0), photons=(3.0, 40.0), read_noise=(3.0, 10.0), hot_pixels=(0.0, 5e-4),
          pattern_noise=(0.0, 0.6), dtypes=("uint16", "float32")),
    # --- held out: never drawn by a training recipe -----------------------------------------
    Style("tiny", "held out: tiny nuclei (5-8 px), 8-bit", held_out=True,
          diameter=(5.0, 8.0), coverage=(0.15, 0.3), psf_sigma=(0.6, 1.0), photons=(80.0, 400.0),
          dtypes=("uint8",)),
    Style("huge", "held out: huge irregular nuclei (65-100 px) with nucleoli", held_out=True,
          diameter=(65.0, 100.0), aspect=(1.0, 1.8), irregularity=(0.05, 0.15), texture=(0.2, 0.4),
          nucleoli=(0.2, 0.4), psf_sigma=(2.0, 3.5), dtypes=("uint16",)),
    Style("speckled", "held out: fine speckled chromatin, strong foci and dark nucleoli (16-36 px)",
          held_out=True, diameter=(16.0, 36.0), texture=(0.6, 0.8), grain=(0.02, 0.04), foci=(0.8, 1.2),
          nucleoli=(0.5, 0.8), dtypes=("uint16",)),
    Style("lowlight", "held out: very low light (5-20 photons), strong read noise (16-34 px)", held_out=True,
          diameter=(16.0, 34.0), photons=(5.0, 20.0), read_noise=(5.0, 10.0), dtypes=("uint16",)),
    Style("elongated", "held out: strongly elongated nuclei (aspect 2-3.5, 16-40 px)", held_out=True,
          diameter=(16.0, 40.0), aspect=(2.0, 3.5), irregularity=(0.03, 0.08), dtypes=("uint16",)),
)}


def style_names(*, held_out: bool | None = None) -> list[str]:
    """Names of all styles, or of the training (``held_out=False``) or held-out ones."""
    return [n for n, s in STYLES.items() if held_out is None or s.held_out == held_out]


def get_style(name: str) -> Style:
    """The style called ``name``; a ``ValueError`` naming the styles otherwise."""
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"Unknown style {name!r}; expected one of {', '.join(STYLES)}.") from None


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(r[0]) if r[0] == r[1] else float(rng.uniform(*r))


def _loguniform(rng: np.random.Generator, r: Range) -> float:
    return float(r[0]) if r[0] == r[1] else float(np.exp(rng.uniform(np.log(r[0]), np.log(r[1]))))


def draw_options(style: Style, rng: np.random.Generator, shape: tuple[int, int]) -> dict:
    """Keyword options of :func:`synthetic_nuclei` for one image of ``style``."""
    if style.fixed:
        return {}
    d = _loguniform(rng, style.diameter)
    aspect = style.aspect
    mean_area = np.pi * (d / 2) ** 2 / np.mean(aspect)
    coverage = _uniform(rng, style.coverage)
    options = {
        "n_objects": int(round(coverage * shape[0] * shape[1] / mean_area)),
        "radius": (max(1.0, d / 2 * (1 - style.spread)), max(1.0, d / 2 * (1 + style.spread))),
        "aspect": aspect,
        "body_radius": (max(1.5, 0.12 * d), max(2.5, 0.28 * d)),
        "min_area": max(6, int(0.02 * np.pi * d * d / 4)),
        "texture_scale": max(0.7, _uniform(rng, style.grain) * d),
    }
    for name in ("irregularity", "touching", "dim_fraction", "brightness_sigma", "bodies", "texture", "foci",
                 "nucleoli", "background_level", "psf_sigma", "read_noise", "illumination", "haze"):
        options[name] = _uniform(rng, getattr(style, name))
    options["photons"] = _loguniform(rng, style.photons)
    options["dtype"] = style.dtypes[int(rng.integers(0, len(style.dtypes)))]
    # drawn after the rest (and only when a style has them), so older styles keep their images
    for name in _CLUTTER:
        if getattr(style, name) != (0.0, 0.0):
            options[name] = _uniform(rng, getattr(style, name))
    if style.dim_level != Style.dim_level:
        options["dim_level"] = style.dim_level
    return options


_CLUTTER = ("mitoses", "fragments", "defocus", "autofluorescence", "cytoplasm", "ghosts", "debris", "fibers", "specks",
            "hot_pixels", "pattern_noise", "saturation")


@dataclass(frozen=True)
class StyleImage:
    """One image of a style: the image, its instance labels, the options drawn and the true
    typical object size: the median equivalent diameter of the nuclei away from the border
    (not counting the small bodies, mitotic bars and fragments some styles draw too)."""

    image: np.ndarray
    labels: np.ndarray
    options: dict
    object_size: float
    nuclei: int | None = None  # labels 1..nuclei are nuclei (None: all)


def style_image(style: str | Style, shape: tuple[int, int] = (512, 512), *, seed: int) -> StyleImage:
    """One synthetic image of ``style`` drawn from ``seed`` (the same seed gives the same image).

    The ``classic`` style gives ``synthetic_nuclei(shape, seed=seed, dtype="uint16")``.
    """
    style = get_style(style) if isinstance(style, str) else style
    rng = np.random.default_rng(seed)
    options = draw_options(style, rng, tuple(shape))
    options.setdefault("dtype", "uint16")
    drawn = synthetic_image(tuple(shape), rng=rng, **options)
    return StyleImage(drawn.image, drawn.labels, options, _nucleus_size(drawn.labels, drawn.nuclei), drawn.nuclei)


def _nucleus_size(labels: np.ndarray, nuclei: int | None) -> float:
    return median_diameter(labels if nuclei is None else np.where(labels <= nuclei, labels, 0))


def write_style_images(folder, seeds, style, shape: tuple[int, int] = (512, 512)):
    """Write images of ``style`` (a name, or a function of the seed giving one) drawn from
    ``seeds`` as ``folder/images/nuclei_<seed>.tif`` and their instance labels as
    ``folder/labels/nuclei_<seed>.tif`` (what ``fastunet train`` and ``evaluate`` read);
    returns both folders."""
    from pathlib import Path

    import tifffile

    folder = Path(folder)
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        drawn = style_image(style(seed) if callable(style) else style, tuple(shape), seed=int(seed))
        tifffile.imwrite(images / f"nuclei_{seed}.tif", drawn.image)
        tifffile.imwrite(labels / f"nuclei_{seed}.tif", drawn.labels)
    return images, labels


DEGRADATIONS = {
    "none": "the image as drawn",
    "noisy": "Gaussian noise of a quarter of the image's range added",
    "blurred": "blurred by a Gaussian of 2 px",
    "uneven": "illumination falling to 30 % towards one corner",
    "cluttered": "bright specks (1 per 1000 px) and hot pixels (1 per 1000 px)",
    "hazy": "a bright haze of out-of-focus light, twice the image blurred by 10 px",
    "8bit": "an 8-bit export of low contrast (the range in 40 gray levels)",
    "half": "downsampled by 2 (objects half as large)",
}


def glow(image: np.ndarray, strength: float, width: float, *, low: float | None = None) -> np.ndarray:
    """``image`` (float32) in a glow of out-of-focus light: ``strength`` times the image above
    its ``low`` level (default: its 1st percentile) blurred by a Gaussian of ``width`` px, added.

    Each bright object gets a halo about as wide as ``width``: the light of the object's own
    parts above and below the focal plane in a thick widefield sample (where the generator's
    ``haze`` is the far wider light of other planes)."""
    from scipy import ndimage as ndi

    image = np.asarray(image, np.float64)
    low = float(np.percentile(image, 1.0)) if low is None else float(low)
    return (image + strength * ndi.gaussian_filter(image - low, float(width))).astype(np.float32)


def degrade(drawn: StyleImage, how: str, *, seed: int) -> StyleImage:
    """``drawn`` made worse in one of the ways of :data:`DEGRADATIONS` (known truth kept; for
    ``"half"`` the labels and their size are downsampled too), for testing what depends on the
    image's look, such as the object-size estimate."""
    from scipy import ndimage as ndi

    if how not in DEGRADATIONS:
        raise ValueError(f"Unknown degradation {how!r}; expected one of {', '.join(DEGRADATIONS)}.")
    rng = np.random.default_rng(seed)
    image = drawn.image.astype(np.float32)
    labels = drawn.labels
    low, high = np.percentile(image, [1.0, 99.8])
    span = max(float(high - low), 1e-6)
    if how == "noisy":
        image = image + rng.normal(0.0, 0.25 * span, image.shape).astype(np.float32)
    elif how == "blurred":
        image = ndi.gaussian_filter(image, 2.0)
    elif how == "uneven":
        yy, xx = np.mgrid[: image.shape[0], : image.shape[1]].astype(np.float32)
        r2 = (yy**2 + xx**2) / float(image.shape[0] ** 2 + image.shape[1] ** 2)
        image = low + (image - low) * (1.0 - 0.7 * r2)
    elif how == "cluttered":
        specks = np.zeros(image.shape, np.float32)
        count = image.size // 1000
        specks[rng.integers(0, image.shape[0], count), rng.integers(0, image.shape[1], count)] = 4 * span * 2 * np.pi
        image = image + ndi.gaussian_filter(specks, 1.0)
        hot = rng.random(image.shape) < 1e-3
        image[hot] = high + 3 * span
    elif how == "hazy":
        image = glow(image, 2.0, 10.0, low=low)
    elif how == "8bit":
        return StyleImage(np.clip(np.rint((image - low) / span * 40 + 10), 0, 255).astype(np.uint8), labels,
                          {**drawn.options, "degraded": how}, drawn.object_size, drawn.nuclei)
    elif how == "half":
        image = ndi.zoom(ndi.gaussian_filter(image, 0.5), 0.5, order=1)
        labels = labels[::2, ::2][: image.shape[0], : image.shape[1]]
        return StyleImage(image, labels, {**drawn.options, "degraded": how}, _nucleus_size(labels, drawn.nuclei),
                          drawn.nuclei)
    return StyleImage(image.astype(np.float32), labels, {**drawn.options, "degraded": how}, drawn.object_size,
                      drawn.nuclei)
