"""Procedural chest phantoms with grounded findings, for training and evaluating the demo model.

A phantom is a radiograph-like frontal image (optionally a lateral view and a prior frontal),
0-3 abnormal findings each with a tight image-frame box, and templated report text from a small
fixed vocabulary. It is a toy: it only has to look chest-like enough for a tiny model to learn
laterality, zones and boxes.

Geometry lives in *anatomy coordinates* (u, v): the processor's square centre crop of the
current frontal image mapped to [0, 1] x [0, 1], u to the image right, v down. Radiological
convention: the patient's right is on the image left. The prior frontal sees the same anatomy
through a slightly shifted, scaled and rotated frame. Anatomy is rendered on a coarse grid and
upsampled; each lesion is rendered at full resolution inside its own window as the difference
(density with lesions - density without), which is also where its box comes from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from model_backend.boxes import centre_crop_square
from model_backend.types import Box

KINDS = ("consolidation", "mass", "nodule", "effusion", "pneumothorax", "cardiomegaly")  # report order
SIDES = ("right", "left")  # patient's side; right is on the image left
ZONES = ("upper", "middle", "lower")
STATUSES = ("new", "unchanged", "increased")

INDICATIONS = (
    "Cough.",
    "Shortness of breath.",
    "Chest pain.",
    "Fever and cough.",
    "Follow-up.",
    "Pre-operative assessment.",
)
COMPARISONS_WITH_PRIOR = (
    "Prior chest radiograph.",
    "Chest radiograph from 1 month earlier.",
    "Chest radiograph from 6 months earlier.",
    "Chest radiograph from 1 year earlier.",
)
NO_COMPARISON = "None."
TECHNIQUE_FRONTAL = "PA view of the chest."
TECHNIQUE_WITH_LATERAL = "PA and lateral views of the chest."

LUNGS_CLEAR = "The lungs are clear."
NO_CONSOLIDATION = "There is no focal consolidation."
NO_EFFUSION = "There is no pleural effusion."
NO_PNEUMOTHORAX = "There is no pneumothorax."
HEART_NORMAL = "The heart size is normal."

_FOCAL = ("nodule", "mass", "consolidation")
_LO_SIDE = 288  # coarse anatomy grid: samples across the centre crop
_VISIBLE = 0.12  # a lesion's box covers where it changes the density by more than this fraction of its peak
_MAX_STEP = {"nodule": 1.0, "mass": 1.0, "consolidation": 1.0, "pneumothorax": 1.5}  # lesion window sampling, px
_CROP_MARGIN = 0.04  # lesions stay this far (crop units) inside the centre crop
_MIN_SIDE, _MAX_SIDE = 128, 4096


@dataclass(frozen=True)
class PhantomFinding:
    """One abnormal finding: what, where (patient side, lung zone), its image-frame box and sentence."""

    kind: str
    side: str | None
    zone: str | None
    image_box: Box  # pixels of the image it was drawn on; x_max/y_max are exclusive pixel edges
    sentence: str
    status: str | None = None  # relative to the prior: "new", "unchanged", "increased"; None without prior


@dataclass(frozen=True, eq=False)
class Phantom:
    """A rendered study: images (2-D uint8/uint16), findings with boxes, normal statements and prompt texts."""

    frontal: np.ndarray
    lateral: np.ndarray | None
    prior_frontal: np.ndarray | None
    findings: tuple[PhantomFinding, ...]  # in report order: by kind (KINDS), right before left
    normal_sentences: tuple[str, ...]
    prior_findings: tuple[PhantomFinding, ...]
    indication: str
    technique: str
    comparison: str
    prior_report: str | None  # None when there is no prior


# ----------------------------------------------------------------------------- text


def _sentence(kind: str, side: str | None, zone: str | None, status: str | None) -> str:
    if kind in _FOCAL:
        noun = {"nodule": "nodule", "mass": "mass", "consolidation": "consolidation"}[kind]
        where = f"in the {side} {zone} zone"
        if status is None:
            article = {"nodule": "a nodule", "mass": "a large mass", "consolidation": "consolidation"}[kind]
            return f"There is {article} {where}."
        if status == "new":
            article = {"nodule": "a new nodule", "mass": "a new large mass", "consolidation": "new consolidation"}[kind]
            return f"There is {article} {where}."
        grown = "has increased in size" if kind != "consolidation" else "has increased"
        return f"The {noun} {where} {'is unchanged' if status == 'unchanged' else grown}."
    if kind == "cardiomegaly":
        return {
            None: "The heart is enlarged.",
            "new": "The heart is newly enlarged.",
            "unchanged": "The heart remains enlarged.",
            "increased": "The heart size has increased.",
        }[status]
    name = f"{side} pleural effusion" if kind == "effusion" else f"{side} apical pneumothorax"
    if status is None:
        return f"There is a {name}."
    if status == "new":
        return f"There is a new {name}."
    return f"The {name} {'is unchanged' if status == 'unchanged' else 'has increased'}."


def sentence_for(finding: PhantomFinding, with_prior: bool) -> str:
    """The finding's sentence; mentions its status only when the prior is shown and a status exists."""
    return _sentence(finding.kind, finding.side, finding.zone, finding.status if with_prior else None)


def _normal_sentences(kinds: set[str]) -> tuple[str, ...]:
    out = []
    if not kinds & set(_FOCAL):
        out.append(LUNGS_CLEAR)
    elif "consolidation" not in kinds:
        out.append(NO_CONSOLIDATION)
    if "effusion" not in kinds:
        out.append(NO_EFFUSION)
    if "pneumothorax" not in kinds:
        out.append(NO_PNEUMOTHORAX)
    if "cardiomegaly" not in kinds:
        out.append(HEART_NORMAL)
    return tuple(out)


def all_template_sentences() -> list[str]:
    """Every sentence and section text the generator can emit (for tokenizer training)."""
    out: list[str] = []
    statuses: tuple[str | None, ...] = (None, *STATUSES)
    for kind in KINDS:
        for status in statuses:
            if kind in _FOCAL:
                out += [_sentence(kind, s, z, status) for s in SIDES for z in ZONES]
            elif kind == "cardiomegaly":
                out.append(_sentence(kind, None, None, status))
            else:
                out += [_sentence(kind, s, None, status) for s in SIDES]
    out += [LUNGS_CLEAR, NO_CONSOLIDATION, NO_EFFUSION, NO_PNEUMOTHORAX, HEART_NORMAL]
    out += [*INDICATIONS, TECHNIQUE_FRONTAL, TECHNIQUE_WITH_LATERAL, *COMPARISONS_WITH_PRIOR, NO_COMPARISON]
    return out


def report_findings(phantom: Phantom, with_prior: bool) -> list[tuple[str, Box | None]]:
    """Target report: abnormal sentences (by kind, right before left) with boxes, then normal statements."""
    out: list[tuple[str, Box | None]] = [(sentence_for(f, with_prior), f.image_box) for f in phantom.findings]
    return out + [(s, None) for s in phantom.normal_sentences]


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Frame:
    """Maps anatomy coordinates to an image: the centre crop plus a small similarity transform."""

    width: int
    height: int
    shift: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    angle: float = 0.0

    @property
    def crop(self) -> tuple[float, float, float]:
        return centre_crop_square(self.width, self.height)

    def to_pixels(self, u: float, v: float) -> tuple[float, float]:
        """Anatomy point -> continuous image coordinates (pixel i spans [i, i + 1))."""
        x_off, y_off, side = self.crop
        c, s = math.cos(self.angle), math.sin(self.angle)
        cu = 0.5 + self.shift[0] + self.scale * (c * (u - 0.5) - s * (v - 0.5))
        cv = 0.5 + self.shift[1] + self.scale * (s * (u - 0.5) + c * (v - 0.5))
        return x_off + cu * side, y_off + cv * side

    def grid(self, x0: int, x1: int, y0: int, y1: int, nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
        """Anatomy coordinates (u, v) of nx x ny sample centres tiling the pixel window [x0, x1) x [y0, y1)."""
        x_off, y_off, side = self.crop
        xs = x0 + (np.arange(nx, dtype=np.float64) + 0.5) * (x1 - x0) / nx
        ys = y0 + (np.arange(ny, dtype=np.float64) + 0.5) * (y1 - y0) / ny
        cu = ((xs - x_off) / side - 0.5 - self.shift[0]) / self.scale
        cv = ((ys - y_off) / side - 0.5 - self.shift[1]) / self.scale
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = 0.5 + (c * cu)[None, :] + (s * cv)[:, None]
        v = 0.5 + (-s * cu)[None, :] + (c * cv)[:, None]
        return u.astype(np.float32), v.astype(np.float32)


@dataclass(frozen=True)
class _Lung:
    """One lung in (d, v): d is the distance from the midline towards its own side."""

    apex_v: float
    apex_d: float
    lat_d: float  # lateral wall at the widest level
    base_v: float  # widest level
    med_d: float
    dome_v: float  # top of the hemidiaphragm
    dome_d: float
    cp_v: float  # costophrenic angle

    def distances(self, d: np.ndarray, v: np.ndarray, shrink: float = 0.0) -> tuple[np.ndarray, ...]:
        """Signed distances (inside > 0) to apex, lateral wall, medial border and dome; `shrink` collapses the apex."""
        top = (self.apex_v + shrink) + 3.5 * (d - self.apex_d) ** 2
        lat = (self.lat_d - 0.6 * shrink) - 0.9 * np.maximum(self.base_v - v, 0.0) ** 2
        return v - top, lat - d, d - self.med_d, self.dome(d) - v

    def dome(self, d: np.ndarray) -> np.ndarray:
        """The hemidiaphragm: highest at dome_d, down to the costophrenic angle laterally."""
        k = (self.cp_v - self.dome_v) / (self.lat_d - self.dome_d) ** 2
        return self.dome_v + np.where(d > self.dome_d, k, 0.4 * k) * (d - self.dome_d) ** 2

    def mask(self, d: np.ndarray, v: np.ndarray, shrink: float = 0.0) -> np.ndarray:
        a, b, c, e = self.distances(d, v, shrink)
        return _edge(a, 0.012) * _edge(b, 0.012) * _edge(c, 0.012) * _edge(e, 0.01)

    def lateral_wall(self, v: float) -> float:
        return self.lat_d - 0.9 * max(self.base_v - v, 0.0) ** 2


@dataclass(frozen=True)
class _Heart:
    """An ellipse resting on the diaphragm (its lower part is hidden below the domes)."""

    u: float
    v: float
    a: float
    b: float
    angle: float
    base_v: float  # growth anchor: an enlarged heart grows up and to the patient's left from here

    def centre(self, scale: float) -> tuple[float, float]:
        return self.u + (scale - 1.0) * self.a * 0.55, self.base_v - (self.base_v - self.v) * scale

    def ellipse(self, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
        a, b = self.a * scale, self.b * scale
        cu, cv = self.centre(scale)
        c, s = math.cos(self.angle), math.sin(self.angle)
        du, dv = u - cu, v - cv
        q = ((c * du + s * dv) / a) ** 2 + ((-s * du + c * dv) / b) ** 2
        return _edge((1.0 - np.sqrt(q)) * b, 0.007)

    def extent(self, scale: float) -> tuple[float, float, float, float]:
        r = max(self.a, self.b) * scale + 0.01
        cu, cv = self.centre(scale)
        return cu - r, cv - r, cu + r, cv + r


@dataclass(frozen=True, eq=False)
class _Anatomy:
    mid: float
    right: _Lung
    left: _Lung
    heart: _Heart
    body_w: float
    soft: float
    air: float
    spine: float
    ribs: float
    markings: float
    rib_spacing: float
    rib_phase: float
    rib_slope: float
    bubble: float
    gradient: tuple[float, float]
    texture: np.ndarray  # random lattice sampled in anatomy coordinates (lung markings, mottling)

    def lung(self, side: str) -> _Lung:
        return self.right if side == "right" else self.left

    def side_d(self, side: str, u: np.ndarray) -> np.ndarray:
        return self.mid - u if side == "right" else u - self.mid

    def to_u(self, side: str, d: float) -> float:
        return self.mid - d if side == "right" else self.mid + d

    def heart_mask(self, u: np.ndarray, v: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """The visible heart: its ellipse cut by the hemidiaphragms."""
        d = u - self.mid
        floor = np.where(d > 0, self.left.dome(d), self.right.dome(-d))
        return self.heart.ellipse(u, v, scale) * _edge(floor + 0.008 - v, 0.012)


def _edge(x: np.ndarray, w: float) -> np.ndarray:
    """Smooth step from 0 (x <= -w/2) to 1 (x >= w/2): a soft inside test with finite support."""
    t = np.clip(x * (1.0 / w) + 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sample(texture: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Bilinear, wrap-around lookup of the lattice at continuous lattice coordinates."""
    return cv2.remap(
        texture, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
    )


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A Python float (numpy scalars would silently promote float32 images to float64)."""
    return float(rng.uniform(lo, hi))


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    s = _uniform(rng, 0.93, 1.03)  # global size, about (0.5, 0.47)
    sx, sy = _uniform(rng, -0.02, 0.02), _uniform(rng, -0.02, 0.02)

    def vv(v: float) -> float:
        return 0.47 + (v - 0.47) * s + sy

    def jit(x: float, sd: float) -> float:
        return x + float(rng.normal(0.0, sd))

    def lung(dome_v: float, med_d: float) -> _Lung:
        dome = vv(jit(dome_v, 0.012))
        return _Lung(
            apex_v=vv(jit(0.14, 0.01)),
            apex_d=s * jit(0.17, 0.01),
            lat_d=s * jit(0.37, 0.01),
            base_v=vv(jit(0.62, 0.02)),
            med_d=s * jit(med_d, 0.005),
            dome_v=dome,
            dome_d=s * jit(0.2, 0.015),
            cp_v=dome + s * jit(0.075, 0.01),
        )

    mid = 0.5 + sx
    right, left = lung(0.70, 0.055), lung(0.73, 0.06)
    heart = _Heart(
        u=mid + s * jit(0.04, 0.01),
        v=vv(jit(0.655, 0.01)),
        a=s * jit(0.16, 0.008),
        b=s * jit(0.105, 0.006),
        angle=jit(-0.45, 0.08),
        base_v=left.dome_v,
    )
    lattice = rng.standard_normal((64, 96)).astype(np.float32)
    texture = cv2.GaussianBlur(np.tile(lattice, (3, 3)), (0, 0), 1.1)[64:128, 96:192]  # periodic blur
    texture /= texture.std()
    return _Anatomy(
        mid=mid,
        right=right,
        left=left,
        heart=heart,
        body_w=s * _uniform(rng, 0.44, 0.5),
        soft=_uniform(rng, 0.6, 0.68),
        air=_uniform(rng, 0.36, 0.46),
        spine=_uniform(rng, 0.05, 0.1),
        ribs=_uniform(rng, 0.04, 0.07),
        markings=_uniform(rng, 0.05, 0.09),
        rib_spacing=s * _uniform(rng, 0.07, 0.082),
        rib_phase=_uniform(rng, 0.0, 1.0),
        rib_slope=_uniform(rng, 0.2, 0.32),
        bubble=_uniform(rng, 0.0, 0.14) * (rng.random() < 0.7),
        gradient=(_uniform(rng, -0.05, 0.05), _uniform(rng, -0.04, 0.06)),
        texture=texture,
    )


# ----------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class _Lesion:
    """A lesion in anatomy coordinates. `size`: radius (focal kinds), fluid height (effusion),
    apical gap (pneumothorax) or heart scale - 1 (cardiomegaly). `blobs`: consolidation parts
    (du, dv, radius, weight) or lobulation harmonics (amplitude, phase) for nodules and masses."""

    kind: str
    side: str | None
    u: float
    v: float
    size: float
    amp: float  # contrast as a fraction of the lung's air density
    depth: float  # position front-to-back on the lateral view (0 anterior .. 1 posterior)
    blobs: tuple[tuple[float, ...], ...] = ()

    def smaller(self, factor: float) -> _Lesion:
        """The same lesion at an earlier, smaller stage (for status 'increased')."""
        if self.kind == "consolidation":
            blobs = tuple((du * factor, dv * factor, r * factor, w) for du, dv, r, w in self.blobs)
            return replace(self, size=self.size * factor, blobs=blobs)
        return replace(self, size=self.size * factor)

    def extent(self, anat: _Anatomy) -> tuple[float, float, float, float]:
        """Anatomy-coordinate bounding box containing everything the lesion can change."""
        if self.kind in ("nodule", "mass"):
            r = self.size * (1.0 + sum(abs(b[0]) for b in self.blobs)) + 0.005
            return self.u - r, self.v - r, self.u + r, self.v + r
        if self.kind == "consolidation":
            r = max(math.hypot(du, dv) + rad for du, dv, rad, _ in self.blobs) + 0.005
            return self.u - r, self.v - r, self.u + r, self.v + r
        if self.kind == "cardiomegaly":
            return anat.heart.extent(1.0 + self.size)
        assert self.side is not None
        lung = anat.lung(self.side)
        if self.kind == "effusion":
            d0, d1 = lung.med_d - 0.01, lung.lat_d + 0.01
            v0, v1 = self.v - 0.08, lung.cp_v + 0.02
        else:
            d0, d1 = lung.med_d - 0.01, lung.lat_d + 0.01
            v0, v1 = lung.apex_v - 0.02, self.v + 0.03
        u0, u1 = sorted((anat.to_u(self.side, d0), anat.to_u(self.side, d1)))
        return u0, v0, u1, v1


def _focal_profile(les: _Lesion, u: np.ndarray, v: np.ndarray, texture: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Opacity 0..1 of a nodule/mass (lobulated sphere) or consolidation (patchy, bounded by `lung`)."""
    du, dv = u - les.u, v - les.v
    if les.kind != "consolidation":
        theta = np.arctan2(dv, du)
        r = np.full_like(u, les.size)
        for k, (a, ph) in enumerate(les.blobs, start=2):
            r = r + les.size * a * np.cos(k * theta + ph)
        prof = np.sqrt(np.clip(1.0 - (du * du + dv * dv) / (r * r), 0.0, 1.0))
        if les.kind == "mass":
            prof *= 0.94 + 0.06 * _sample(texture, u * 160.0, v * 160.0)
        return np.clip(prof, 0.0, 1.0)
    field = np.zeros_like(u)
    for bu, bv, rad, w in les.blobs:
        field += w * np.clip(1.0 - ((du - bu) ** 2 + (dv - bv) ** 2) / (rad * rad), 0.0, 1.0)
    mottle = 0.75 + 0.25 * _sample(texture, u * 150.0 + 17.0, v * 150.0 + 5.0)
    return _edge(field - 0.35, 0.9) * np.clip(mottle, 0.0, 1.3) * lung


def _effusion_fluid(les: _Lesion, anat: _Anatomy, u: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fluid fraction 0..1 in one hemithorax below a meniscus that climbs the lateral wall."""
    assert les.side is not None
    lung = anat.lung(les.side)
    d = anat.side_d(les.side, u)
    top_med = lung.dome_v - les.size
    t = np.clip((d - lung.med_d) / (lung.lat_d - lung.med_d), 0.0, 1.0)
    top = top_med - les.blobs[0][0] * t * t
    depth = np.clip((v - top) / max(les.size, 0.02), 0.0, 1.0)
    return _edge(v - top, 0.02) * (0.75 + 0.25 * depth) * mask


def _pneumothorax(
    les: _Lesion, anat: _Anatomy, u: np.ndarray, v: np.ndarray, outer: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(air region without lung, visceral pleural line) at one apex; `outer` is that lung's mask."""
    assert les.side is not None
    lung = anat.lung(les.side)
    d = anat.side_d(les.side, u)
    top, lat, _, _ = lung.distances(d, v, shrink=les.size)
    inside = np.minimum(top, lat)  # signed distance to the collapsed lung's edge
    limit = _edge(les.v - v, 0.03)
    gap = (1.0 - _edge(inside, 0.004)) * outer * limit
    line = np.clip(1.0 - np.abs(inside) / 0.0035, 0.0, 1.0) * outer * limit
    return gap, line


# ----------------------------------------------------------------------------- densities


@dataclass(frozen=True, eq=False)
class _Fields:
    """The lesion-independent parts of a PA chest on one grid of anatomy points (computed once per grid)."""

    u: np.ndarray
    v: np.ndarray
    static: np.ndarray  # density that neither the heart size nor any lesion changes
    silhouette: np.ndarray  # superior mediastinum and aortic knob, 0..1 (the heart is added per render)
    heart: np.ndarray  # the normal heart
    ribs: np.ndarray
    spine: np.ndarray
    lungs: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # right, left: (mask, air profile, vessel streaks)


def _frontal_fields(anat: _Anatomy, u: np.ndarray, v: np.ndarray, sides: Sequence[str] = SIDES) -> _Fields:
    """Fields on a grid. With fewer `sides` (a lesion window), only what lesions there can change is
    computed: the density parts that cancel in (with lesions - without) are left at zero."""
    mid, heart_geo = anat.mid, anat.heart
    zero = np.zeros((), np.float32)
    da = np.abs(u - mid)
    width = 0.1 + (anat.body_w + 0.03 - 0.1) * _edge(v + 0.04, 0.16) - 0.03 * _edge(v - 0.3, 0.4)
    body = _edge(width - da, 0.03)
    soft = body * (0.8 + 0.2 * np.clip(1.0 - (da / anat.body_w) ** 2, 0.0, 1.0))
    # mediastinal silhouette: widens from the superior mediastinum down into the heart; aortic knob on the left
    ramp = np.clip((v - 0.3) * (1.0 / (heart_geo.v - 0.3)), 0.0, 1.0)
    mediastinum = _edge(0.045 + 0.035 * ramp * ramp - np.abs(u - mid - 0.01), 0.012)
    mediastinum *= _edge(heart_geo.v - 0.04 - v, 0.04)
    aorta = _edge(1.0 - np.sqrt(((u - mid - 0.05) / 0.038) ** 2 + ((v - 0.29) / 0.03) ** 2), 0.3)

    lungs = []
    for side, sign in (("right", -1.0), ("left", 1.0)):
        if side not in sides:
            lungs.append((zero, zero, zero))
            continue
        lung = anat.lung(side)
        d = (u - mid) * sign
        a, b, c, e = lung.distances(d, v)
        mask = _edge(a, 0.012) * _edge(b, 0.012) * _edge(c, 0.012) * _edge(e, 0.01)
        inner = np.clip(np.minimum(np.minimum(a, b), np.minimum(c, e)) * (1.0 / 0.07), 0.0, 1.0)
        # vessel-like streaks radiating from the hilum: ridged noise in log-polar coordinates
        hd, hv = d - (lung.med_d + 0.04), v - 0.45
        r = np.sqrt(hd * hd + hv * hv) + 0.003
        theta = np.arctan2(hv, hd)
        n = _sample(anat.texture, theta * (192.0 / (2.0 * math.pi)) + 48.0 * (sign > 0), np.log(r) * 2.0 + 40.0)
        streak = np.clip(1.0 - np.abs(n) * 2.5, 0.0, 1.0) ** 2 * np.clip(1.3 - r * (1.0 / 0.3), 0.0, 1.0)
        lungs.append((mask, mask * (0.7 + 0.3 * inner), (streak + 0.8 * _edge(0.06 - r, 0.06)) * mask))
    heart = anat.heart_mask(u, v)
    silhouette = np.maximum(mediastinum, aorta)
    if len(sides) < len(SIDES):
        return _Fields(u, v, zero, silhouette, heart, zero, zero, tuple(lungs))

    # ribs: posterior arcs (rise, then fall along the lateral wall) and faint anterior ribs sloping down medially
    lat_wall = 0.5 * (anat.right.lat_d + anat.left.lat_d) + 0.03 - 0.9 * np.maximum(0.6 - v, 0.0) ** 2
    dome_mean = 0.5 * (anat.right.dome_v + anat.left.dome_v)
    cage = _edge(lat_wall - da, 0.025) * _edge(da - 0.03, 0.015)
    cage *= _edge(v - 0.03, 0.04) * _edge(dome_mean + 0.08 - v, 0.08)
    post = (v + anat.rib_slope * da - 1.5 * da * da) * (1.0 / anat.rib_spacing) - anat.rib_phase
    f = post - np.floor(post)
    rib = 0.55 * _edge(f - 0.03, 0.04) * _edge(0.37 - f, 0.04)
    rib += 0.45 * (_edge(0.025 - np.abs(f - 0.05), 0.025) + _edge(0.025 - np.abs(f - 0.35), 0.025))
    ant = (v + 0.6 * da) * (1.0 / (1.25 * anat.rib_spacing))
    g = ant - np.floor(ant)
    rib += 0.35 * _edge(g - 0.04, 0.05) * _edge(0.3 - g, 0.05) * _edge(da - 0.15, 0.06)
    clav = _edge(0.012 - np.abs(v - (0.1 - 0.2 * (da - 0.04) + 0.55 * (da - 0.04) ** 2)), 0.01)
    clav *= _edge(da - 0.025, 0.02) * _edge(0.31 - da, 0.04)

    spine = _edge(0.034 - da, 0.012) * (0.8 + 0.2 * np.cos(v * (2.0 * math.pi / 0.047))) * body
    trachea = _edge(0.012 - da, 0.008) * _edge(0.34 - v, 0.05)
    abdomen = _edge(v - dome_mean - 0.06, 0.14)
    bubble_du, bubble_dv = u - (mid + 0.19), v - (anat.left.dome_v + 0.055)
    bubble = _edge(1.0 - np.sqrt((bubble_du / 0.05) ** 2 + (bubble_dv / 0.028) ** 2), 0.3)

    static = 0.03 + anat.soft * soft + 0.05 * body * abdomen + 0.06 * clav
    static -= 0.06 * trachea + anat.bubble * bubble * body
    static += anat.gradient[0] * (u - 0.5) + anat.gradient[1] * (v - 0.5)
    return _Fields(u, v, static, silhouette, heart, rib * cage, spine, tuple(lungs))


def _frontal_density(anat: _Anatomy, fields: _Fields, lesions: Sequence[_Lesion]) -> np.ndarray:
    """Attenuation (bright = dense) of a PA chest on the fields' grid, lesions included."""
    u, v = fields.u, fields.v
    heart_scale = 1.0 + sum(les.size for les in lesions if les.kind == "cardiomegaly")
    heart = fields.heart if heart_scale == 1.0 else anat.heart_mask(u, v, heart_scale)
    cover = 1.0 - 0.96 * np.maximum(heart, fields.silhouette)
    air = np.zeros_like(u)
    marks = np.zeros_like(u)
    opacity = np.zeros_like(u)
    in_lung = np.zeros_like(u)
    for side, (mask, air_profile, streaks) in zip(SIDES, fields.lungs, strict=True):
        lung_air = air_profile * cover
        side_marks = streaks * cover
        for les in lesions:
            if les.side != side:
                continue
            if les.kind == "effusion":
                fluid = _effusion_fluid(les, anat, u, v, mask)
                lung_air = lung_air * (1.0 - les.amp * fluid)
                side_marks = side_marks * (1.0 - fluid)
            elif les.kind == "pneumothorax":
                gap, line = _pneumothorax(les, anat, u, v, mask)
                lung_air = lung_air + gap * (mask * cover * (1.0 + les.amp) - lung_air)
                side_marks = side_marks * (1.0 - gap)
                opacity += 0.3 * line
            elif les.kind in _FOCAL:
                opacity += les.amp * _focal_profile(les, u, v, anat.texture, mask)
        air += lung_air
        marks += side_marks
        in_lung += mask * cover
    dens = fields.static + 0.02 * heart + anat.spine * fields.spine * (1.0 - 0.5 * heart)
    dens += anat.ribs * fields.ribs * (0.3 + 0.7 * in_lung) + anat.markings * marks
    dens -= anat.air * (air - opacity)
    return dens


def _lateral_density(anat: _Anatomy, u: np.ndarray, v: np.ndarray, lesions: Sequence[_Lesion]) -> np.ndarray:
    """Attenuation of a lateral chest (patient facing the image left): sternum front, spine back."""
    ant = 0.12 + 0.6 * np.maximum(0.12 - v, 0.0)
    body = _edge(np.minimum(u - ant, 0.9 - u), 0.03)
    base = 0.5 * (anat.right.dome_v + anat.left.dome_v)
    dome = base + 0.9 * (u - 0.4) ** 2
    front = 0.19 + 0.3 * np.maximum(v - 0.5, 0.0)
    a, b, c, e = v - (anat.right.apex_v + 1.6 * (u - 0.52) ** 2), u - front, 0.83 - u, dome - v
    lung = _edge(a, 0.015) * _edge(b, 0.015) * _edge(c, 0.02) * _edge(e, 0.012)
    inner = np.clip(np.minimum(np.minimum(a, b), np.minimum(c, e)) * (1.0 / 0.08), 0.0, 1.0)
    scale = 1.0 + sum(les.size for les in lesions if les.kind == "cardiomegaly")
    lateral_heart = _Heart(0.38, base - 0.05, 0.15, 0.1, 0.6, base)
    heart = lateral_heart.ellipse(u, v, scale) * _edge(dome + 0.01 - v, 0.012)
    air = lung * (0.72 + 0.28 * inner) * (1.0 - 0.9 * heart)
    opacity = np.zeros_like(u)
    for les in lesions:
        if les.kind == "effusion":  # both sides project onto the posterior costophrenic sulcus
            rise = les.blobs[0][0] * np.clip((u - 0.4) * 2.5, 0.0, 1.0) ** 2
            fluid = _edge(v - (dome + 0.03 - 0.7 * les.size - rise), 0.02) * _edge(u - 0.5, 0.1) * lung
            air = air * (1.0 - 0.9 * les.amp * fluid)
        elif les.kind in _FOCAL:
            opacity += 0.8 * les.amp * _focal_profile(replace(les, u=les.depth), u, v, anat.texture, lung)
    spine_c = 0.79 - 0.04 * np.maximum(v - 0.5, 0.0)
    vert = _edge(0.045 - np.abs(u - spine_c), 0.012)
    phase = v * (1.0 / 0.05) - np.floor(v * (1.0 / 0.05))
    vert *= 0.65 + 0.35 * _edge(0.38 - np.abs(phase - 0.5), 0.06)
    sternum = _edge(0.011 - np.abs(u - (front - 0.04)), 0.008) * _edge(v - 0.14, 0.03) * _edge(0.58 - v, 0.04)
    trachea = _edge(0.018 - np.abs(u - (0.44 + 0.12 * v)), 0.01) * _edge(0.38 - v, 0.05)
    rib_w = (v - 0.25 * u) * (1.0 / anat.rib_spacing)
    fr = rib_w - np.floor(rib_w)
    ribs = _edge(fr - 0.05, 0.06) * _edge(0.35 - fr, 0.06) * _edge(u - 0.55, 0.1) * _edge(0.86 - v, 0.08) * body
    dens = 0.03 + 1.1 * anat.soft * body + 1.3 * anat.spine * vert + 0.06 * sternum + 0.03 * heart
    dens += 0.6 * anat.ribs * ribs - 0.06 * trachea
    dens -= 0.8 * anat.air * (air - opacity)
    dens += anat.gradient[1] * (v - 0.5)
    return dens


# ----------------------------------------------------------------------------- rendering


def _coarse(frame: _Frame) -> tuple[np.ndarray, np.ndarray]:
    _, _, side = frame.crop
    f = max(1.0, side / _LO_SIDE)
    nx, ny = max(2, round(frame.width / f)), max(2, round(frame.height / f))
    return frame.grid(0, frame.width, 0, frame.height, nx, ny)


def _window(frame: _Frame, extent: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    u0, v0, u1, v1 = extent
    pts = [frame.to_pixels(u, v) for u in (u0, u1) for v in (v0, v1)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, y0 = max(0, math.floor(min(xs)) - 4), max(0, math.floor(min(ys)) - 4)
    x1, y1 = min(frame.width, math.ceil(max(xs)) + 4), min(frame.height, math.ceil(max(ys)) + 4)
    return x0, y0, x1, y1


def _mask_box(mask: np.ndarray, x0: int, y0: int) -> Box | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return Box(float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))


def _render_frontal_density(
    anat: _Anatomy, frame: _Frame, lesions: Sequence[_Lesion]
) -> tuple[np.ndarray, list[Box | None]]:
    """Full-resolution density and each lesion's tight box (None if it drew nothing).

    Each lesion is evaluated in its own window as (density with lesions - without), at full
    resolution for small sharp lesions and at the anatomy grid's resolution for large smooth ones.
    """
    base = _frontal_density(anat, _frontal_fields(anat, *_coarse(frame)), ())
    dens = cv2.resize(base, (frame.width, frame.height), interpolation=cv2.INTER_LINEAR)
    delta = np.zeros_like(dens)
    coarse_step = max(1.0, frame.crop[2] / _LO_SIDE)
    windows = [_window(frame, les.extent(anat)) for les in lesions]
    boxes: list[Box | None] = []
    for i, (les, (x0, y0, x1, y1)) in enumerate(zip(lesions, windows, strict=True)):
        if x1 - x0 < 2 or y1 - y0 < 2:
            boxes.append(None)
            continue
        step = min(coarse_step, _MAX_STEP.get(les.kind, coarse_step))
        nx, ny = max(2, round((x1 - x0) / step)), max(2, round((y1 - y0) / step))
        near = [o for o, w in zip(lesions, windows, strict=True) if o is not les and _overlaps(w, windows[i], 0.0)]
        involved = (les, *near)
        sides = SIDES if any(o.kind == "cardiomegaly" for o in involved) else tuple({o.side for o in involved})
        fields = _frontal_fields(anat, *frame.grid(x0, x1, y0, y1, nx, ny), sides=sides)
        none = _frontal_density(anat, fields, ())
        alone = _frontal_density(anat, fields, (les,)) - none
        together = _frontal_density(anat, fields, (les, *near)) - none if near else alone
        if les.kind == "cardiomegaly":
            alone = anat.heart_mask(fields.u, fields.v, 1.0 + les.size)
        if (nx, ny) != (x1 - x0, y1 - y0):
            together = cv2.resize(together, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
            alone = cv2.resize(alone, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        delta[y0:y1, x0:x1] = together
        mag = np.abs(alone)
        peak = float(mag.max())
        threshold = 0.5 if les.kind == "cardiomegaly" else _VISIBLE * peak
        boxes.append(_mask_box(mag > threshold, x0, y0) if peak > 0 else None)
    return dens + delta, boxes


def _finish(dens: np.ndarray, rng: np.random.Generator, bit_depth: int) -> np.ndarray:
    """Detector response: signal-dependent noise, slight blur, quantisation (16-bit with an offset)."""
    sigma_g, sigma_p = _uniform(rng, 0.004, 0.012), _uniform(rng, 0.006, 0.018)
    blur = _uniform(rng, 0.6, 1.1)
    lo8, hi8 = _uniform(rng, 0.0, 14.0), _uniform(rng, 228.0, 255.0)
    offset, top16 = _uniform(rng, 256.0, 4096.0), _uniform(rng, 0.88, 1.0) * 65535.0
    # uniform noise (cheap to draw); the blur below makes it Gaussian-like and spatially correlated
    sigma = np.maximum(dens, 0.0)
    cv2.sqrt(sigma, sigma)
    sigma *= sigma_p * (1.6 / 73.9)
    sigma += sigma_g * (1.6 / 73.9)
    img = np.frombuffer(rng.bytes(dens.size), dtype=np.uint8).reshape(dens.shape).astype(np.float32)
    img -= 127.5
    img *= sigma
    img += dens
    img = cv2.GaussianBlur(img, (0, 0), blur)
    np.clip(img, 0.0, 1.0, out=img)
    if bit_depth == 8:
        return cv2.convertScaleAbs(img, alpha=hi8 - lo8, beta=lo8)  # rounds and saturates to uint8
    img *= top16 - offset
    img += offset + 0.5
    return img.astype(np.uint16)


# ----------------------------------------------------------------------------- findings


def _overlaps(a: tuple[float, ...], b: tuple[float, ...], pad: float = 0.015) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _inside_crop(ext: tuple[float, float, float, float]) -> bool:
    return (
        ext[0] >= _CROP_MARGIN and ext[1] >= _CROP_MARGIN and ext[2] <= 1 - _CROP_MARGIN and ext[3] <= 1 - _CROP_MARGIN
    )


def _place_focal(
    kind: str, side: str, anat: _Anatomy, taken: list[tuple[float, ...]], heart_scale: float, rng: np.random.Generator
) -> _Lesion | None:
    lung = anat.lung(side)
    for _ in range(40):
        zone = int(rng.integers(3))
        t = (zone + _uniform(rng, 0.25, 0.75)) / 3.0
        v = lung.apex_v + t * (lung.dome_v - lung.apex_v)
        if kind == "nodule":
            size = _uniform(rng, 0.03, 0.06) / 2.0  # about 10-20 mm across
            blobs: tuple[tuple[float, ...], ...] = ((_uniform(rng, 0, 0.08), _uniform(rng, 0, 6.3)),)
            amp = _uniform(rng, 0.5, 0.9)
        elif kind == "mass":
            size = _uniform(rng, 0.09, 0.15) / 2.0  # over 30 mm, well defined
            blobs = ((_uniform(rng, 0, 0.1), _uniform(rng, 0, 6.3)), (_uniform(rng, 0, 0.07), _uniform(rng, 0, 6.3)))
            amp = _uniform(rng, 0.6, 0.95)
        else:
            size = _uniform(rng, 0.07, 0.095)  # larger, fainter and ill-defined (airspace), unlike a mass
            n = int(rng.integers(5, 9))
            blobs = tuple(
                (
                    float(rng.normal(0, size * 0.6)),
                    float(rng.normal(0, size * 0.6)),
                    size * _uniform(rng, 0.45, 0.8),
                    _uniform(rng, 0.6, 1.0),
                )
                for _ in range(n)
            )
            amp = _uniform(rng, 0.25, 0.45)
        d = _uniform(rng, lung.med_d + size + 0.02, max(lung.med_d + size + 0.02, lung.lateral_wall(v) - size - 0.015))
        les = _Lesion(kind, side, anat.to_u(side, d), v, size, amp, _uniform(rng, 0.3, 0.7), blobs)
        ext = les.extent(anat)
        if not _inside_crop(ext) or any(_overlaps(ext, o) for o in taken):
            continue
        ring = np.linspace(0.0, 2.0 * math.pi, 12, endpoint=False)
        reach = size if kind != "consolidation" else size * 0.8
        pu = np.array([les.u, *(les.u + reach * np.cos(ring))], dtype=np.float32)[None, :]
        pv = np.array([les.v, *(les.v + reach * np.sin(ring))], dtype=np.float32)[None, :]
        in_lung = lung.mask(anat.side_d(side, pu), pv) * (1.0 - anat.heart_mask(pu, pv, heart_scale))
        if in_lung.min() > 0.9:
            return les
    return None


def _draw_findings(anat: _Anatomy, rng: np.random.Generator) -> list[_Lesion]:
    """0-3 lesions (25% none), distinct (kind, side), non-overlapping, inside the centre crop, in report order."""
    count = int(rng.choice(4))
    pool = [(k, s) for k in KINDS if k != "cardiomegaly" for s in SIDES] + [("cardiomegaly", None)]
    weights = np.array([1.0 if side is None else 0.5 for _, side in pool])  # every kind equally likely
    picks = [pool[i] for i in rng.choice(len(pool), size=count, replace=False, p=weights / weights.sum())]
    picks.sort(key=lambda p: ("cardiomegaly", "effusion", "pneumothorax", *_FOCAL).index(p[0]))
    lesions: list[_Lesion] = []
    taken: list[tuple[float, ...]] = []
    heart_scale = 1.0
    for kind, side in picks:
        les: _Lesion | None
        if kind == "cardiomegaly":
            les = _Lesion(kind, None, anat.heart.u, anat.heart.v, _uniform(rng, 0.25, 0.45), 1.0, 0.4)
            heart_scale = 1.0 + les.size
        elif kind == "effusion":
            assert side is not None
            height = _uniform(rng, 0.07, 0.2)
            les = _Lesion(
                kind,
                side,
                anat.to_u(side, 0.2),
                anat.lung(side).dome_v - height,
                height,
                _uniform(rng, 0.6, 0.95),
                0.8,
                ((_uniform(rng, 0.03, 0.07),),),
            )
        elif kind == "pneumothorax":
            assert side is not None
            lung = anat.lung(side)
            les = _Lesion(
                kind,
                side,
                anat.to_u(side, 0.2),
                lung.apex_v + _uniform(rng, 0.2, 0.32) * (lung.dome_v - lung.apex_v),
                _uniform(rng, 0.035, 0.075),
                _uniform(rng, 0.15, 0.35),
                0.5,
            )
        else:
            assert side is not None
            les = _place_focal(kind, side, anat, taken, heart_scale, rng)
        if les is None:
            continue
        ext = les.extent(anat)
        if not _inside_crop(ext) or any(_overlaps(ext, o, pad=0.0) for o in taken if kind != "cardiomegaly"):
            continue
        lesions.append(les)
        if kind != "cardiomegaly":
            taken.append(ext)
    return sorted(lesions, key=lambda les: (KINDS.index(les.kind), SIDES.index(les.side) if les.side else 0))


def _describe(les: _Lesion, box: Box, anat: _Anatomy, frame: _Frame, status: str | None) -> PhantomFinding:
    """Laterality and zone from where the box lies relative to the midline and the lung's height.

    Effusions sit at the base ("lower"), pneumothoraces at the apex ("upper"); the heart has neither.
    """
    side: str | None = None
    zone: str | None = {"effusion": "lower", "pneumothorax": "upper"}.get(les.kind)
    if les.kind != "cardiomegaly":
        cx, cy = (box.x_min + box.x_max) / 2.0, (box.y_min + box.y_max) / 2.0
        mid_x, _ = frame.to_pixels(anat.mid, 0.5)
        side = "right" if cx < mid_x else "left"
        if les.kind in _FOCAL:
            lung = anat.lung(side)
            _, top = frame.to_pixels(anat.mid, lung.apex_v)
            _, bottom = frame.to_pixels(anat.mid, lung.dome_v)
            zone = ZONES[min(2, max(0, int(3.0 * (cy - top) / (bottom - top))))]
    return PhantomFinding(les.kind, side, zone, box, _sentence(les.kind, side, zone, status), status)


# ----------------------------------------------------------------------------- public


def _child(rng: np.random.Generator) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int(rng.integers(0, 2**63))))


def _random_size(rng: np.random.Generator) -> tuple[int, int]:
    short = int(rng.integers(384, 1025))
    aspect = float(rng.uniform(0.75, 1.33))
    if aspect >= 1.0:
        return min(round(short * aspect), math.floor(short * 1.33)), short
    return short, min(round(short / aspect), math.floor(short / 0.75))


def render_phantom(
    seed: int,
    *,
    with_lateral: bool | None = None,
    with_prior: bool | None = None,
    size: tuple[int, int] | None = None,
    bit_depth: int | None = None,
    draw_findings: bool = True,
) -> Phantom:
    """Render the phantom for `seed` (deterministic). `size` is (width, height) in pixels.

    Unset options are drawn from the seed: short side 384-1024 px, aspect 0.75-1.33, 8 or 16 bit,
    lateral and prior each half the time. Overriding one option leaves everything else as drawn.
    `draw_findings=False` gives the same study without any lesion (same noise, normal report).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if bit_depth not in (None, 8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if size is not None and (
        len(size) != 2 or not all(isinstance(s, (int, np.integer)) and _MIN_SIDE <= s <= _MAX_SIDE for s in size)
    ):
        raise ValueError(f"size must be (width, height) with sides in {_MIN_SIDE}..{_MAX_SIDE} px, got {size!r}")

    root = np.random.Generator(np.random.PCG64(int(seed)))
    drawn_size = _random_size(root)
    drawn_depth = 16 if root.random() < 0.5 else 8
    drawn_lateral, drawn_prior = bool(root.random() < 0.5), bool(root.random() < 0.5)
    rng_anat, rng_find, rng_text, rng_prior = _child(root), _child(root), _child(root), _child(root)
    rng_noise, rng_noise_prior, rng_noise_lateral = _child(root), _child(root), _child(root)

    width, height = size if size is not None else drawn_size
    depth = bit_depth if bit_depth is not None else drawn_depth
    lateral_on = drawn_lateral if with_lateral is None else with_lateral
    prior_on = drawn_prior if with_prior is None else with_prior

    anat = _draw_anatomy(rng_anat)
    lesions = _draw_findings(anat, rng_find) if draw_findings else []
    statuses = [STATUSES[int(i)] for i in rng_text.integers(0, 3, size=3)]
    indication = INDICATIONS[int(rng_text.integers(len(INDICATIONS)))]
    comparison = COMPARISONS_WITH_PRIOR[int(rng_text.integers(len(COMPARISONS_WITH_PRIOR)))]
    shrink = float(rng_text.uniform(0.5, 0.7))

    frame = _Frame(int(width), int(height))
    dens, boxes = _render_frontal_density(anat, frame, lesions)
    frontal = _finish(dens, rng_noise, depth)
    kept = [
        (les, box, statuses[i] if prior_on else None)
        for i, (les, box) in enumerate(zip(lesions, boxes, strict=True))
        if box is not None
    ]
    findings = tuple(_describe(les, box, anat, frame, status) for les, box, status in kept)

    prior_frontal, prior_findings, prior_report = None, (), None
    if prior_on:
        prior_frame = _Frame(
            frame.width,
            frame.height,
            tuple(rng_prior.uniform(-0.015, 0.015, size=2)),  # type: ignore[arg-type]
            float(rng_prior.uniform(0.98, 1.02)),
            float(rng_prior.uniform(-0.02, 0.02)),
        )
        earlier = [
            (les if status == "unchanged" else les.smaller(shrink), f)
            for (les, _, status), f in zip(kept, findings, strict=True)
            if status != "new"
        ]
        prior_dens, prior_boxes = _render_frontal_density(anat, prior_frame, [les for les, _ in earlier])
        prior_frontal = _finish(prior_dens, rng_noise_prior, depth)
        prior_findings = tuple(
            PhantomFinding(f.kind, f.side, f.zone, box, _sentence(f.kind, f.side, f.zone, None))
            for (_, f), box in zip(earlier, prior_boxes, strict=True)
            if box is not None
        )
        prior_kinds = {f.kind for f in prior_findings}
        prior_report = " ".join([f.sentence for f in prior_findings] + list(_normal_sentences(prior_kinds)))

    lateral = None
    if lateral_on:
        lu, lv = _coarse(frame)
        lat = _lateral_density(anat, lu, lv, [les for les, _, _ in kept])
        lateral = _finish(
            cv2.resize(lat, (frame.width, frame.height), interpolation=cv2.INTER_LINEAR), rng_noise_lateral, depth
        )

    return Phantom(
        frontal=frontal,
        lateral=lateral,
        prior_frontal=prior_frontal,
        findings=findings,
        normal_sentences=_normal_sentences({f.kind for f in findings}),
        prior_findings=prior_findings,
        indication=indication,
        technique=TECHNIQUE_WITH_LATERAL if lateral_on else TECHNIQUE_FRONTAL,
        comparison=comparison if prior_on else NO_COMPARISON,
        prior_report=prior_report,
    )


def to_png_bytes(arr: np.ndarray) -> bytes:
    """Encode a 2-D uint8 or uint16 image as PNG bytes (bit depth preserved)."""
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        got = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"expected a 2-D uint8 or uint16 array, got {got}")
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
