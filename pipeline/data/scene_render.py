"""Draw a scene as an RGB image with PIL (no anti-aliasing: pixels depend only on the scene)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from pipeline.data.scene import BACKGROUND, COLOURS, Scene, SceneObject, half_extent

Point = tuple[float, float]


def _regular(cx: float, cy: float, radii: list[float], start_deg: float = -90.0) -> list[Point]:
    step = 360.0 / len(radii)
    return [
        (cx + r * math.cos(math.radians(start_deg + i * step)), cy + r * math.sin(math.radians(start_deg + i * step)))
        for i, r in enumerate(radii)
    ]


def _cross(cx: float, cy: float, r: float) -> list[Point]:
    w = 0.34 * r  # arm half-width: thick enough to survive at the small size
    return [
        (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
        (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
        (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
    ]  # fmt: skip


def _draw_object(
    draw: ImageDraw.ImageDraw, obj: SceneObject, image_size: int, fill: int | tuple[int, ...] | None = None
) -> None:
    """`obj` in its colour, or in `fill` (a mask's value)."""
    cell_edge = image_size / 3
    cx = (obj.cell % 3 + 0.5) * cell_edge + obj.offset[0]
    cy = (obj.cell // 3 + 0.5) * cell_edge + obj.offset[1]
    r = half_extent(obj.size, image_size)
    fill = COLOURS[obj.colour] if fill is None else fill
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif obj.shape == "square":
        s = 0.85 * r  # a square of the same half-extent would look much heavier than the other shapes
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    elif obj.shape == "triangle":
        # The centroid of a triangle sits low; shift it so the triangle fills its box evenly.
        draw.polygon(_regular(cx, cy + 0.25 * r, [1.15 * r] * 3), fill=fill)
    elif obj.shape == "star":
        draw.polygon(_regular(cx, cy + 0.1 * r, [1.1 * r, 0.45 * r] * 5), fill=fill)
    elif obj.shape == "cross":
        draw.polygon(_cross(cx, cy, r), fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)], fill=fill)
    else:
        raise ValueError(f"no drawing rule for shape {obj.shape!r}")


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, image_size)
    return image


def object_box(obj: SceneObject, image_size: int) -> tuple[int, int, int, int]:
    """The tight box (x, y, width, height; COCO's bbox) of the pixels `obj` covers, drawn alone by the same rules."""
    mask = Image.new("L", (image_size, image_size), 0)
    _draw_object(ImageDraw.Draw(mask), obj, image_size, fill=255)
    box = mask.getbbox()
    if box is None:
        raise ValueError(f"{obj} covers no pixel of a {image_size}-pixel image")
    left, top, right, bottom = box
    return left, top, right - left, bottom - top
