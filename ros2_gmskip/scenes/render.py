# Copyright 2026 ros2_gmskip developers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
Deterministic procedural front-camera road scenes, with ground truth.

    img, scene = render_scene(seed=10_000_123)     # (480, 640, 3) uint8 RGB, Scene

The same seed always gives the same bytes: all randomness comes from
`np.random.default_rng(seed)`, drawn in a fixed order (layout first, then the drawing details).

Geometry (fractions of the image size, so any resolution works): the horizon sits at 0.45 H and
the road is a trapezoid from the bottom edge to a vanishing point at the image centre. Objects
stand in one of six slots, left/ahead/right x near/far. Near objects stand low (base 0.86-0.94 H)
at full size; far objects stand just below the horizon (base 0.56-0.61 H) at 0.45 x size. Sizes
are given for 640x480 and scale with min(W/640, H/480).

Drawing order: sky and ground (numpy), road, markings, scenery and street lamps (PIL), a fog
gradient on that background, then the objects far to near, each shaded by lighting and by fog
for its distance, then rain streaks and pixel noise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from ros2_gmskip.scenes.captions import caption_for
from ros2_gmskip.scenes.spec import (
    CLASSES,
    DISTANCES,
    LIGHT_STATES,
    LIGHTINGS,
    POSITIONS,
    Scene,
    SceneObject,
    VEHICLE_COLORS,
    WEATHERS,
)

RGB = tuple[int, int, int]

HORIZON = 0.45              # horizon row, fraction of H
ROAD_HALF_BOTTOM = 0.60     # road half-width at the bottom row, fraction of W
NEAR_BASE = (0.86, 0.94)    # base row of near objects, fraction of H
FAR_BASE = (0.56, 0.61)     # base row of far objects, fraction of H
FAR_SCALE = 0.45            # far objects' size relative to near
SIZE_JITTER = 0.10          # +- relative size
NOISE_SIGMA = 3.0           # pixel noise, uint8 levels

N_OBJECTS_P = (0.4, 0.4, 0.2)          # P(1, 2, 3 objects)
SLOTS = tuple((p, d) for d in DISTANCES for p in POSITIONS)
# classes that stand on the roadside: never 'ahead near'
ROADSIDE_ONLY = ('traffic_light', 'stop_sign')
# objects on the road surface vs on the sidewalk: x centre (fraction of W) per (position, distance)
ROAD_X = {('left', 'near'): 0.19, ('right', 'near'): 0.81,
          ('left', 'far'): 0.355, ('right', 'far'): 0.645}
SIDE_X = {('left', 'near'): 0.08, ('right', 'near'): 0.92,
          ('left', 'far'): 0.27, ('right', 'far'): 0.73}
ON_SIDEWALK = ('pedestrian', 'traffic_light', 'stop_sign')
X_JITTER = {'near': 0.04, 'far': 0.02}  # +- fraction of W
# Layouts are drawn in this frame, so a seed means the same scene at any resolution; the sizes
# below are in its pixels, at near distance.
CANON = (640, 480)
SIZES = {'car': (190, 110), 'truck': (210, 170), 'bus': (260, 160), 'pedestrian': (45, 150),
         'cyclist': (90, 140), 'cone': (50, 70)}                    # bbox (w, h)
TL_HOUSING, TL_POLE = (42, 120), 100        # traffic light housing (w, h) on a pole of this height
STOP_DIAMETER, STOP_POLE = 90, 110          # stop sign octagon (flat to flat) on a pole
MAX_HIDDEN = 0.3            # most of an object's bbox that objects in front may cover
LAYOUT_TRIES = 30

PAINT: dict[str, RGB] = {
    'red': (200, 30, 35), 'blue': (35, 75, 200), 'white': (235, 235, 235),
    'black': (28, 28, 32), 'gray': (130, 132, 138), 'yellow': (240, 200, 25),
}
LAMP_ON: dict[str, RGB] = {'red': (255, 45, 35), 'yellow': (255, 200, 20), 'green': (40, 255, 110)}
LAMP_OFF: dict[str, RGB] = {'red': (70, 22, 22), 'yellow': (70, 58, 18), 'green': (18, 60, 30)}
CLOTHES: tuple[RGB, ...] = ((200, 40, 40), (40, 90, 200), (40, 150, 60), (230, 180, 30),
                            (150, 60, 160), (230, 110, 30), (240, 240, 240), (90, 90, 95))
SKIN: tuple[RGB, ...] = ((240, 200, 170), (200, 150, 110), (140, 95, 65), (90, 60, 40))


@dataclass(frozen=True)
class Look:
    """How lighting and weather shade a colour."""

    sky_top: RGB
    sky_horizon: RGB
    bg_mul: tuple[float, float, float]     # background (ground, road, scenery) multiplier
    obj_mul: tuple[float, float, float]    # object multiplier (night keeps ~55 % so colours read)
    fog_color: RGB
    night: bool

    def bg(self, c: RGB) -> RGB:
        return tuple(int(min(255, v * m)) for v, m in zip(c, self.bg_mul))

    def obj(self, c: RGB, fog: float = 0.0) -> RGB:
        out = [v * m for v, m in zip(c, self.obj_mul)]
        if fog:
            out = [v * (1 - fog) + f * fog for v, f in zip(out, self.fog_color)]
        return tuple(int(min(255, v)) for v in out)

    def emit(self, c: RGB, fog: float = 0.0) -> RGB:
        """Return a light source's color: not darkened by lighting, only veiled by fog."""
        if not fog:
            return c
        return tuple(int(v * (1 - fog * 0.7) + f * fog * 0.7) for v, f in zip(c, self.fog_color))


def _look(lighting: str, weather: str) -> Look:
    sky = {'day': ((70, 130, 215), (175, 210, 240)),
           'dusk': ((55, 45, 110), (250, 145, 75)),
           'night': ((4, 7, 22), (22, 28, 58))}[lighting]
    bg = {'day': (1.0, 1.0, 1.0), 'dusk': (0.78, 0.68, 0.68), 'night': (0.32, 0.33, 0.4)}[lighting]
    obj = {'day': (1.0, 1.0, 1.0), 'dusk': (0.9, 0.8, 0.78), 'night': (0.56, 0.56, 0.6)}[lighting]
    fog = {'day': (205, 207, 210), 'dusk': (185, 165, 160), 'night': (75, 78, 88)}[lighting]
    if weather == 'rain':
        sky = {'day': ((110, 115, 125), (160, 163, 170)),
               'dusk': ((75, 68, 85), (165, 125, 105)),
               'night': ((12, 13, 18), (38, 38, 46))}[lighting]
        bg = tuple(v * 0.82 for v in bg)
        obj = tuple(v * 0.88 for v in obj)
    return Look(sky[0], sky[1], bg, obj, fog, lighting == 'night')


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Placed:
    """An object chosen by the layout step, before drawing."""

    cls: str
    color: str | None
    position: str
    distance: str
    cx: float           # x centre, pixels
    base: float         # ground contact row, pixels
    s: float            # size scale (1.0 = near size at 640x480)
    variant: int        # class-specific look: bus livery, truck facing, clothes, ...
    tone: int           # second class-specific choice (skin, ...)


def _sample_layout(rng: np.random.Generator) -> list[_Placed]:
    """One draw of 1-3 objects in distinct slots, in the canonical 640x480 frame."""
    W, H = CANON
    n = int(rng.choice(3, p=N_OBJECTS_P)) + 1
    free = list(SLOTS)
    placed = []
    for _ in range(n):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        allowed = [s for s in free if not (cls in ROADSIDE_ONLY and s == ('ahead', 'near'))]
        position, distance = allowed[int(rng.integers(len(allowed)))]
        free.remove((position, distance))
        if cls in ('car', 'truck'):
            color = VEHICLE_COLORS[int(rng.integers(len(VEHICLE_COLORS)))]
        elif cls == 'traffic_light':
            color = LIGHT_STATES[int(rng.integers(len(LIGHT_STATES)))]
        else:
            color = None
        near = distance == 'near'
        if position == 'ahead':
            fx = 0.5
        elif cls in ON_SIDEWALK:
            fx = SIDE_X[position, distance]
        else:
            fx = ROAD_X[position, distance]
        fx += rng.uniform(-1, 1) * X_JITTER[distance]
        base = rng.uniform(*(NEAR_BASE if near else FAR_BASE)) * H
        s = (1.0 if near else FAR_SCALE) * (1 + rng.uniform(-1, 1) * SIZE_JITTER)
        placed.append(_Placed(cls, color, position, distance, fx * W, base, s,
                              int(rng.integers(8)), int(rng.integers(4))))
    return placed


def _extent(p: _Placed) -> tuple[float, float, float, float]:
    """Return the bbox (x0, y0, x1, y1) an object's drawer covers, unclipped."""
    s, cx, b = p.s, p.cx, p.base
    if p.cls == 'traffic_light':
        w, h, top = TL_HOUSING[0] * s, TL_HOUSING[1] * s, b - (TL_POLE + TL_HOUSING[1]) * s
        if p.position == 'ahead':               # hangs over the road: housing + hanger only
            return cx - w / 2, top - 0.12 * h, cx + w / 2, top + h
        return cx - w / 2, top, cx + w / 2, b
    if p.cls == 'stop_sign':
        D = STOP_DIAMETER * s
        return cx - D / 2, b - STOP_POLE * s - D, cx + D / 2, b
    w, h = SIZES[p.cls]
    return cx - w * s / 2, b - h * s, cx + w * s / 2, b


def _overlap(a, b) -> float:
    dx = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    dy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return dx * dy


def _hidden_fraction(placed: list[_Placed]) -> list[float]:
    """Per object: the fraction of its bbox (in the image) covered by objects drawn after it."""
    W, H = CANON
    order = sorted(range(len(placed)), key=lambda i: placed[i].base)   # drawing order
    boxes = []
    for p in placed:
        x0, y0, x1, y1 = _extent(p)
        boxes.append((max(0.0, x0), max(0.0, y0), min(W, x1), min(H, y1)))
    out = [0.0] * len(placed)
    for rank, i in enumerate(order):
        a = boxes[i]
        area = max(1e-6, (a[2] - a[0]) * (a[3] - a[1]))
        later = [boxes[j] for j in order[rank + 1:]]
        covered = sum(_overlap(a, b) for b in later)
        if len(later) == 2:                     # inclusion-exclusion for the double-counted part
            b, c = later
            abc = (max(a[0], b[0], c[0]), max(a[1], b[1], c[1]),
                   min(a[2], b[2], c[2]), min(a[3], b[3], c[3]))
            covered -= max(0.0, abc[2] - abc[0]) * max(0.0, abc[3] - abc[1])
        out[i] = covered / area
    return out


def _layout(rng: np.random.Generator) -> list[_Placed]:
    """
    Objects in the canonical frame, each at most MAX_HIDDEN covered by the ones in front.

    Layouts are redrawn (from the same generator, so still deterministic) until no object is
    hidden; after LAYOUT_TRIES the hidden objects of the last draw are dropped instead.
    """
    for _ in range(LAYOUT_TRIES):
        placed = _sample_layout(rng)
        if max(_hidden_fraction(placed)) <= MAX_HIDDEN:
            return placed
    hidden = _hidden_fraction(placed)
    kept = [p for p, f in zip(placed, hidden) if f <= MAX_HIDDEN]
    return kept or [max(placed, key=lambda p: p.base)]


def _to_image(p: _Placed, W: int, H: int) -> _Placed:
    """Map a canonical-frame placement onto a W x H image (sizes scale uniformly)."""
    k = min(W / CANON[0], H / CANON[1])
    return replace(p, cx=p.cx * W / CANON[0], base=p.base * H / CANON[1], s=p.s * k)


# ----------------------------------------------------------------------------- background


def _road_half(W: int, H: int, y: float) -> float:
    """Half-width of the road at row y (0 at the horizon)."""
    t = (y - HORIZON * H) / (H - HORIZON * H)
    return ROAD_HALF_BOTTOM * W * max(t, 0.0)


def _background(rng: np.random.Generator, W: int, H: int, look: Look, lighting: str,
                weather: str) -> Image.Image:
    yh = int(round(HORIZON * H))
    # sky gradient + flat ground, as numpy rows
    img = np.empty((H, W, 3), np.uint8)
    t = np.linspace(0.0, 1.0, yh, dtype=np.float32)[:, None] ** 1.3           # (yh, 1)
    top, hor = np.array(look.sky_top, np.float32), np.array(look.sky_horizon, np.float32)
    img[:yh] = (top * (1 - t) + hor * t).astype(np.uint8)[:, None, :]         # (yh, 1, 3)
    grass = look.bg((85, 130, 65) if rng.random() < 0.6 else (125, 120, 95))
    img[yh:] = np.array(grass, np.uint8)
    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil, 'RGBA')
    cx = W / 2

    # scenery on the horizon, off the road: buildings and trees, small and desaturated
    for _ in range(int(rng.integers(3, 8))):
        side = -1 if rng.random() < 0.5 else 1
        x = cx + side * rng.uniform(0.2, 0.5) * W
        w, h = rng.uniform(0.03, 0.08) * W, rng.uniform(0.03, 0.09) * H
        if rng.random() < 0.55:
            g = int(rng.integers(95, 150))
            col = look.bg((g, g - 5, g + 5))
            d.rectangle([x - w / 2, yh - h, x + w / 2, yh], fill=col)
        else:
            d.rectangle([x - w * 0.06, yh - h * 0.45, x + w * 0.06, yh],
                        fill=look.bg((80, 60, 40)))
            d.ellipse([x - w / 2, yh - h * 1.1, x + w / 2, yh - h * 0.3],
                      fill=look.bg((50, 100, 50)))

    # sidewalk, then road, as trapezoids from the bottom edge to the vanishing point
    hb = _road_half(W, H, H)
    walk = look.bg((165, 162, 155))
    d.polygon([(cx, yh), (cx - hb * 1.28, H), (cx + hb * 1.28, H)], fill=walk)
    road_c = (100, 100, 105) if weather != 'rain' else (78, 80, 86)
    d.polygon([(cx, yh), (cx - hb, H), (cx + hb, H)], fill=look.bg(road_c))
    if weather == 'rain':      # wet-road sheen: a lighter band down the lanes, reflecting the sky
        sheen = look.sky_horizon + (55,)
        d.polygon([(cx, yh), (cx - hb * 0.45, H), (cx + hb * 0.45, H)], fill=sheen)

    # markings: solid edge lines, two dashed lane lines (3 lanes), dashes spaced in depth
    line_c = look.bg((235, 235, 225))
    yy = H - 1
    for f in (-0.97, 0.97):
        d.polygon([(cx, yh), (cx + f * hb, yy), (cx + (f - 0.012 * np.sign(f)) * hb, yy)],
                  fill=line_c)
    phase = rng.uniform(0, 1)
    for f in (-1 / 3, 1 / 3):
        z = 1.0 + phase * 0.6
        while z < 14:
            t0, t1 = 1 / z, 1 / (z + 0.35)                    # depth -> fraction of road height
            y0, y1 = yh + t0 * (H - yh), yh + t1 * (H - yh)
            w0, w1 = 0.012 * hb * t0, 0.012 * hb * t1
            x0, x1 = cx + f * hb * t0, cx + f * hb * t1
            d.polygon([(x0 - w0, y0), (x0 + w0, y0), (x1 + w1, y1), (x1 - w1, y1)], fill=line_c)
            z += 0.6

    # street lamps at night / dusk: tall poles at the road edges with a warm glow
    if lighting != 'day':
        for _ in range(int(rng.integers(2, 5))):
            side = -1 if rng.random() < 0.5 else 1
            tt = rng.uniform(0.08, 0.5)
            y = yh + tt * (H - yh)
            x = cx + side * _road_half(W, H, y) * 1.2
            h = (0.25 + 1.1 * tt) * H * 0.55
            pw = max(1.0, 5 * tt * W / 640)
            d.rectangle([x - pw / 2, y - h, x + pw / 2, y], fill=look.bg((70, 70, 75)))
            lx = x - side * h * 0.15
            d.line([(x, y - h), (lx, y - h)], fill=look.bg((70, 70, 75)), width=int(pw))
            r = max(2.0, 8 * tt * W / 640)
            d.ellipse([lx - r * 3, y - h - r * 2, lx + r * 3, y - h + r * 4],
                      fill=(255, 210, 140, 40 if lighting == 'night' else 25))
            d.ellipse([lx - r, y - h, lx + r, y - h + r], fill=(255, 235, 180))
    return pil


@lru_cache(maxsize=8)
def _fog_mask(W: int, H: int) -> Image.Image:
    """Fog opacity per pixel ('L'): strongest in the sky and at the horizon, weak at the bottom."""
    yh = HORIZON * H
    y = np.arange(H, dtype=np.float32)
    t = np.clip((y - yh) / (H - yh), 0, 1)
    a = np.where(y < yh, 0.62, 0.1 + 0.52 * (1 - t) ** 2)                   # (H,)
    rows = np.round(a * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows[:, None], (H, W))))


def _fog(img: Image.Image, look: Look) -> Image.Image:
    """Blend the background toward the fog colour, more with distance."""
    return Image.composite(Image.new('RGB', img.size, look.fog_color), img,
                           _fog_mask(img.width, img.height))


# ----------------------------------------------------------------------------- objects
# Each drawer takes the PIL draw, the placement, the look and the object's fog amount, draws the
# object standing on (p.cx, p.base), and returns its unclipped bbox (x0, y0, x1, y1).


def _glow(d: ImageDraw.ImageDraw, x: float, y: float, r: float, c: RGB, alpha: int) -> None:
    d.ellipse([x - r, y - r, x + r, y + r], fill=c + (alpha,))


def _vehicle_lights(d, look, fog, pts, color: RGB, r: float) -> None:
    for x, y in pts:
        if look.night:
            _glow(d, x, y, r * 3.2, color, 55)
            _glow(d, x, y, r * 1.8, color, 90)
        d.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=look.emit(color, fog)
                  if look.night else look.obj(tuple(int(v * 0.7) for v in color), fog))


def _rim(color: str, look: Look, fog: float) -> RGB:
    """Return a lighter edge for a vehicle body, so dark paint still shows on a dark road."""
    return look.obj(tuple(int(min(255, v * 0.6 + 90)) for v in PAINT[color]), fog)


def _car(d, p: _Placed, look: Look, fog: float):
    w, h = (v * p.s for v in SIZES['car'])
    b, cx = p.base, p.cx
    paint = look.obj(PAINT[p.color], fog)
    dark = look.obj((25, 25, 28), fog)
    # wheels (rear view): dark blocks under the body corners
    for sx in (-1, 1):
        d.rectangle([cx + sx * 0.40 * w - 0.07 * w, b - 0.2 * h, cx + sx * 0.40 * w + 0.07 * w, b],
                    fill=dark)
    # cabin with a dark window band, then the body
    d.polygon([(cx - 0.33 * w, b - h), (cx + 0.33 * w, b - h),
               (cx + 0.45 * w, b - 0.58 * h), (cx - 0.45 * w, b - 0.58 * h)], fill=paint)
    d.polygon([(cx - 0.28 * w, b - 0.92 * h), (cx + 0.28 * w, b - 0.92 * h),
               (cx + 0.38 * w, b - 0.64 * h), (cx - 0.38 * w, b - 0.64 * h)],
              fill=look.obj((45, 55, 70), fog))
    d.rounded_rectangle([cx - w / 2, b - 0.62 * h, cx + w / 2, b - 0.14 * h],
                        radius=0.08 * h, fill=paint, outline=_rim(p.color, look, fog),
                        width=max(1, int(2 * p.s)))
    d.rectangle([cx - 0.48 * w, b - 0.24 * h, cx + 0.48 * w, b - 0.14 * h], fill=dark)   # bumper
    d.rectangle([cx - 0.1 * w, b - 0.42 * h, cx + 0.1 * w, b - 0.3 * h],
                fill=look.obj((230, 230, 220), fog))                                  # plate
    lamp = (255, 240, 190) if p.position == 'left' else (255, 30, 30)                 # oncoming
    _vehicle_lights(d, look, fog, [(cx - 0.4 * w, b - 0.48 * h), (cx + 0.4 * w, b - 0.48 * h)],
                    lamp, 0.05 * w)
    return cx - w / 2, b - h, cx + w / 2, b


def _truck(d, p: _Placed, look: Look, fog: float):
    w, h = (v * p.s for v in SIZES['truck'])
    b, cx = p.base, p.cx
    f = 1 if p.variant % 2 else -1        # which way the cab faces
    paint = look.obj(PAINT[p.color], fog)
    cab = look.obj(tuple(int(v * 0.85) for v in PAINT[p.color]), fog)
    dark = look.obj((25, 25, 28), fog)
    xs = sorted((cx - f * w / 2, cx + f * 0.2 * w))
    d.rectangle([xs[0], b - h, xs[1], b - 0.2 * h], fill=paint, outline=_rim(p.color, look, fog),
                width=max(1, int(2 * p.s)))                                            # box
    cs = sorted((cx + f * 0.22 * w, cx + f * w / 2))
    d.polygon([(cs[0], b - 0.62 * h), (cs[1] - (0.06 * w if f > 0 else 0), b - 0.62 * h),
               (cs[1], b - 0.45 * h), (cs[1], b - 0.2 * h), (cs[0], b - 0.2 * h)]
              if f > 0 else
              [(cs[0] + 0.06 * w, b - 0.62 * h), (cs[1], b - 0.62 * h), (cs[1], b - 0.2 * h),
               (cs[0], b - 0.2 * h), (cs[0], b - 0.45 * h)], fill=cab)
    ws = sorted((cx + f * 0.30 * w, cx + f * 0.45 * w))
    d.rectangle([ws[0], b - 0.57 * h, ws[1], b - 0.42 * h], fill=look.obj((45, 55, 70), fog))
    d.rectangle([cx - w / 2, b - 0.22 * h, cx + w / 2, b - 0.13 * h], fill=dark)      # chassis
    r = 0.085 * w
    for fx in (-0.33, -0.15, 0.36):
        x = cx + f * fx * w
        d.ellipse([x - r, b - 2 * r, x + r, b], fill=dark)
        d.ellipse([x - r * 0.4, b - r * 1.4, x + r * 0.4, b - r * 0.6],
                  fill=look.obj((150, 150, 150), fog))
    _vehicle_lights(d, look, fog, [(cx + f * 0.49 * w, b - 0.3 * h)], (255, 240, 190), 0.03 * w)
    _vehicle_lights(d, look, fog, [(cx - f * 0.49 * w, b - 0.3 * h)], (255, 30, 30), 0.03 * w)
    return cx - w / 2, b - h, cx + w / 2, b


def _bus(d, p: _Placed, look: Look, fog: float):
    w, h = (v * p.s for v in SIZES['bus'])
    b, cx = p.base, p.cx
    dark = look.obj((25, 25, 28), fog)
    r = 0.1 * h
    if p.variant < 5:       # yellow bus
        upper = lower = look.obj((245, 185, 20), fog)
    else:                   # blue-and-white city bus
        upper, lower = look.obj((235, 235, 240), fog), look.obj((35, 80, 185), fog)
    d.rounded_rectangle([cx - w / 2, b - h, cx + w / 2, b - 0.12 * h], radius=0.06 * h,
                        fill=upper)
    d.rectangle([cx - w / 2, b - 0.45 * h, cx + w / 2, b - 0.12 * h], fill=lower)
    win = look.obj((45, 55, 70), fog)
    n = 6
    gap = 0.02 * w
    ww = (0.92 * w - (n - 1) * gap) / n
    for i in range(n):
        x0 = cx - 0.46 * w + i * (ww + gap)
        d.rectangle([x0, b - 0.86 * h, x0 + ww, b - 0.55 * h], fill=win)
    d.rectangle([cx - w / 2, b - 0.2 * h, cx + w / 2, b - 0.12 * h], fill=dark)
    for fx in (-0.32, 0.32):
        x = cx + fx * w
        d.ellipse([x - r, b - 2 * r, x + r, b], fill=dark)
    _vehicle_lights(d, look, fog, [(cx + 0.49 * w, b - 0.3 * h)], (255, 240, 190), 0.025 * w)
    _vehicle_lights(d, look, fog, [(cx - 0.49 * w, b - 0.3 * h)], (255, 30, 30), 0.025 * w)
    return cx - w / 2, b - h, cx + w / 2, b


def _pedestrian(d, p: _Placed, look: Look, fog: float):
    w, h = (v * p.s for v in SIZES['pedestrian'])
    b, cx = p.base, p.cx
    shirt = look.obj(CLOTHES[p.variant], fog)
    pants = look.obj((40, 45, 70) if p.tone % 2 else (60, 55, 50), fog)
    skin = look.obj(SKIN[p.tone], fog)
    step = (0.12 if p.variant % 2 else -0.12) * w
    # legs
    d.polygon([(cx - 0.3 * w, b - 0.48 * h), (cx - 0.02 * w, b - 0.48 * h),
               (cx - 0.1 * w - step, b), (cx - 0.38 * w - step, b)], fill=pants)
    d.polygon([(cx + 0.02 * w, b - 0.48 * h), (cx + 0.3 * w, b - 0.48 * h),
               (cx + 0.38 * w + step, b), (cx + 0.1 * w + step, b)], fill=pants)
    # torso and arms
    d.rounded_rectangle([cx - 0.36 * w, b - 0.82 * h, cx + 0.36 * w, b - 0.44 * h],
                        radius=0.1 * w, fill=shirt)
    aw = max(1, int(0.16 * w))
    d.line([(cx - 0.36 * w, b - 0.78 * h), (cx - 0.5 * w, b - 0.5 * h)], fill=shirt, width=aw)
    d.line([(cx + 0.36 * w, b - 0.78 * h), (cx + 0.5 * w, b - 0.5 * h)], fill=shirt, width=aw)
    # head
    d.ellipse([cx - 0.26 * w, b - h, cx + 0.26 * w, b - 0.84 * h], fill=skin)
    d.chord([cx - 0.27 * w, b - h - 0.005 * h, cx + 0.27 * w, b - 0.87 * h], 180, 360,
            fill=look.obj((40, 30, 25), fog))
    return cx - w / 2, b - h, cx + w / 2, b


def _cyclist(d, p: _Placed, look: Look, fog: float):
    w, h = (v * p.s for v in SIZES['cyclist'])
    b, cx = p.base, p.cx
    f = 1 if p.variant % 2 else -1        # riding direction
    dark = look.obj((25, 25, 28), fog)
    frame = look.obj(CLOTHES[(p.variant + 3) % len(CLOTHES)], fog)
    shirt = look.obj(CLOTHES[p.variant], fog)
    r = 0.24 * w
    lw = max(1, int(0.06 * w))
    rear, front = (cx - f * 0.26 * w, b - r), (cx + f * 0.26 * w, b - r)
    for x, y in (rear, front):
        d.ellipse([x - r, y - r, x + r, y + r], outline=dark, width=lw)
    pedal = (cx, b - r * 0.9)
    seat = (cx - f * 0.1 * w, b - 0.52 * h)
    bars = (cx + f * 0.2 * w, b - 0.56 * h)
    d.line([rear, pedal, seat, rear], fill=frame, width=lw)
    d.line([pedal, bars, front], fill=frame, width=lw)
    d.line([seat, bars], fill=frame, width=lw)
    # rider: leg, torso, arm, helmeted head
    tw = max(1, int(0.16 * w))
    shoulder = (cx + f * 0.02 * w, b - 0.84 * h)
    d.line([seat, (cx + f * 0.06 * w, b - 0.35 * h), pedal], fill=look.obj((40, 45, 70), fog),
           width=tw)
    d.line([seat, shoulder], fill=shirt, width=int(tw * 1.5))
    d.line([shoulder, bars], fill=shirt, width=max(1, int(tw * 0.7)))
    hx, hy, hr = cx + f * 0.1 * w, b - 0.92 * h, 0.08 * h
    d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=look.obj(SKIN[p.tone], fog))
    d.chord([hx - hr * 1.1, hy - hr * 1.15, hx + hr * 1.1, hy + hr * 0.5], 180, 360,
            fill=look.obj((230, 60, 40), fog))
    if look.night:
        _vehicle_lights(d, look, fog, [(rear[0] - f * 0.5 * r, b - 0.5 * h)], (255, 30, 30),
                        0.03 * w)
    return cx - w / 2, b - h, cx + w / 2, b


def _traffic_light(d, p: _Placed, look: Look, fog: float, W: int):
    w, h, b, cx = TL_HOUSING[0] * p.s, TL_HOUSING[1] * p.s, p.base, p.cx
    pole = look.obj((70, 72, 75), fog)
    pole_h = TL_POLE * p.s
    top = b - pole_h - h
    if p.position == 'ahead':
        # over the road: hanging from a mast arm that comes from the right roadside
        mx = W * 0.7                          # mast pole on the right roadside
        d.rectangle([mx - 0.1 * w, top - 0.15 * h, mx + 0.1 * w, b], fill=pole)
        d.rectangle([cx, top - 0.15 * h, mx, top - 0.08 * h], fill=pole)
        d.rectangle([cx - 0.06 * w, top - 0.12 * h, cx + 0.06 * w, top], fill=pole)
        bbox = (cx - w / 2, top - 0.12 * h, cx + w / 2, top + h)
    else:
        d.rectangle([cx - 0.1 * w, top + h, cx + 0.1 * w, b], fill=pole)
        bbox = (cx - w / 2, top, cx + w / 2, b)
    d.rounded_rectangle([cx - w / 2, top, cx + w / 2, top + h], radius=0.15 * w,
                        fill=look.obj((30, 32, 30), fog), outline=look.obj((90, 90, 80), fog),
                        width=max(1, int(0.05 * w)))
    r = 0.34 * w
    for i, state in enumerate(('red', 'yellow', 'green')):
        y = top + h * (i + 0.5) / 3
        if state == p.color:
            _glow(d, cx, y, r * 2.4, LAMP_ON[state], 50 if look.night else 35)
            _glow(d, cx, y, r * 1.5, LAMP_ON[state], 90)
            d.ellipse([cx - r, y - r, cx + r, y + r], fill=look.emit(LAMP_ON[state], fog))
        else:
            d.ellipse([cx - r, y - r, cx + r, y + r], fill=look.obj(LAMP_OFF[state], fog))
    return bbox


def _stop_sign(d, p: _Placed, look: Look, fog: float):
    D, b, cx = STOP_DIAMETER * p.s, p.base, p.cx
    pole_h = STOP_POLE * p.s
    cy = b - pole_h - D / 2
    d.rectangle([cx - 0.05 * D, cy, cx + 0.05 * D, b], fill=look.obj((150, 150, 155), fog))

    def octagon(rad: float) -> list[tuple[float, float]]:
        a = np.pi / 8 + np.arange(8) * np.pi / 4
        return [(cx + rad * np.cos(t), cy + rad * np.sin(t)) for t in a]

    R = D / 2 / np.cos(np.pi / 8)        # so the flat-to-flat width is D
    d.polygon(octagon(R), fill=look.obj((245, 245, 245), fog))
    d.polygon(octagon(R * 0.86), fill=look.obj((205, 20, 30), fog))
    # 'STOP' as four white letter blocks
    white = look.obj((245, 245, 245), fog)
    lw, gap = 0.13 * D, 0.04 * D
    x0 = cx - (4 * lw + 3 * gap) / 2
    for i in range(4):
        x = x0 + i * (lw + gap)
        d.rectangle([x, cy - 0.12 * D, x + lw, cy + 0.12 * D], fill=white)
    return cx - D / 2, cy - D / 2, cx + D / 2, b


def _cone(d, p: _Placed, look: Look, fog: float):
    w, h = (v * p.s for v in SIZES['cone'])
    b, cx = p.base, p.cx
    orange = look.obj((255, 115, 10), fog)
    d.rectangle([cx - w / 2, b - 0.1 * h, cx + w / 2, b], fill=look.obj((200, 85, 5), fog))
    d.polygon([(cx - 0.08 * w, b - h), (cx + 0.08 * w, b - h), (cx + 0.4 * w, b - 0.1 * h),
               (cx - 0.4 * w, b - 0.1 * h)], fill=orange)

    def at(t: float) -> float:           # cone half-width at fraction t of its height
        return 0.08 * w + (0.4 * w - 0.08 * w) * (1 - (t - 0.1) / 0.9)

    y0, y1 = 0.6, 0.42
    d.polygon([(cx - at(y0), b - y0 * h), (cx + at(y0), b - y0 * h),
               (cx + at(y1), b - y1 * h), (cx - at(y1), b - y1 * h)],
              fill=look.obj((245, 245, 245), fog))
    return cx - w / 2, b - h, cx + w / 2, b


def _draw_object(d, p: _Placed, look: Look, fog: float, W: int):
    if p.cls == 'traffic_light':
        return _traffic_light(d, p, look, fog, W)
    return {'car': _car, 'truck': _truck, 'bus': _bus, 'pedestrian': _pedestrian,
            'cyclist': _cyclist, 'stop_sign': _stop_sign, 'cone': _cone}[p.cls](d, p, look, fog)


# ----------------------------------------------------------------------------- noise, rain


@lru_cache(maxsize=1)
def _noise_tile() -> np.ndarray:
    """Return a fixed 512x512x3 Gaussian noise tile (int16); images take a seeded window of it."""
    return np.round(np.random.default_rng(0x5CE7E).normal(0, NOISE_SIGMA, (512, 512, 3))
                    ).astype(np.int16)


def _add_noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    H, W, _ = img.shape
    tile = _noise_tile()
    T = tile.shape[0]
    oy, ox = int(rng.integers(T)), int(rng.integers(T))
    reps = ((H + oy) // T + 1, (W + ox) // T + 1, 1)
    noise = np.tile(tile, reps)[oy:oy + H, ox:ox + W]                          # (H, W, 3)
    out = img.astype(np.int16)
    out += noise
    return np.clip(out, 0, 255).astype(np.uint8)


def _rain(d, rng: np.random.Generator, W: int, H: int, look: Look) -> None:
    n = int(160 * W * H / (640 * 480))
    xs = rng.uniform(-0.1 * W, W, n)
    ys = rng.uniform(0, H, n)
    ls = rng.uniform(12, 30, n) * min(W / 640, H / 480)
    c = (210, 215, 225, 70) if not look.night else (160, 165, 180, 60)
    width = max(1, int(round(min(W / 640, H / 480))))
    for x, y, ln in zip(xs, ys, ls):
        d.line([(x, y), (x + 0.3 * ln, y + ln)], fill=c, width=width)


# ----------------------------------------------------------------------------- entry point


def render_scene(seed: int, width: int = 640, height: int = 480) -> tuple[np.ndarray, Scene]:
    """RGB uint8 array (height, width, 3) and its ground truth; same seed -> identical bytes."""
    W, H = int(width), int(height)
    if W < 32 or H < 32:
        raise ValueError(f'image size {W}x{H} too small: need at least 32x32')
    rng = np.random.default_rng(int(seed))
    lighting = LIGHTINGS[int(rng.integers(len(LIGHTINGS)))]
    weather = WEATHERS[int(rng.integers(len(WEATHERS)))]
    placed = [_to_image(p, W, H) for p in _layout(rng)]
    look = _look(lighting, weather)

    bg = _background(rng, W, H, look, lighting, weather)
    if weather == 'fog':
        bg = _fog(bg, look)
    d = ImageDraw.Draw(bg, 'RGBA')
    fog_amount = {'near': 0.12, 'far': 0.42} if weather == 'fog' else {'near': 0.0, 'far': 0.0}
    drawn = []
    for p in sorted(placed, key=lambda q: q.base):        # far (high in the image) first
        x0, y0, x1, y1 = _draw_object(d, p, look, fog_amount[p.distance], W)
        assert np.allclose((x0, y0, x1, y1), _extent(p)), f'{p.cls} drawn off its extent'
        bbox = (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
                min(W, int(np.ceil(x1))), min(H, int(np.ceil(y1))))
        drawn.append(SceneObject(p.cls, p.color, p.position, p.distance, bbox))
    if weather == 'rain':
        _rain(d, rng, W, H, look)
    img = _add_noise(np.asarray(bg), rng)

    objects = tuple(sorted(drawn, key=lambda o: -o.area))  # stable: main object = largest bbox
    scene = Scene(seed=int(seed), width=W, height=H, lighting=lighting, weather=weather,
                  objects=objects, caption=caption_for(lighting, weather, objects))
    return img, scene
