"""Box plots of Dice per structure, drawn with Pillow (the server needs no plotting library).

Boxes follow Tukey: the box spans the quartiles, the line inside is the median, whiskers reach the
furthest values within 1.5 IQR of the box, and values beyond are drawn as dots.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inference.structures import by_name

GROUP_COLOURS = {
    "annotator vs annotator": (90, 90, 90),
    "model vs annotator": (40, 110, 200),
}
WIDTH_PER_STRUCTURE = 110
HEIGHT = 420
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 40, 70


def _y(value: float) -> float:
    """Dice 0..1 to a pixel row (1 at the top)."""
    return TOP + (1.0 - value) * (HEIGHT - TOP - BOTTOM)


def _box(
    draw: ImageDraw.ImageDraw, x: float, width: float, values: Sequence[float], colour: tuple[int, int, int]
) -> None:
    data = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    iqr = q3 - q1
    inside = data[(data >= q1 - 1.5 * iqr) & (data <= q3 + 1.5 * iqr)]
    low, high = float(inside.min()), float(inside.max())
    centre = x + width / 2
    draw.line([(centre, _y(high)), (centre, _y(q3))], fill=colour, width=1)
    draw.line([(centre, _y(q1)), (centre, _y(low))], fill=colour, width=1)
    for whisker in (low, high):
        draw.line(
            [(centre - width / 4, _y(whisker)), (centre + width / 4, _y(whisker))], fill=colour, width=1
        )
    fill = tuple(int(c + (255 - c) * 0.7) for c in colour)
    draw.rectangle([(x, _y(q3)), (x + width, _y(q1))], fill=fill, outline=colour, width=1)
    draw.line([(x, _y(median)), (x + width, _y(median))], fill=colour, width=3)
    for value in data[(data < low) | (data > high)]:
        draw.ellipse([(centre - 2, _y(value) - 2), (centre + 2, _y(value) + 2)], outline=colour)


#: The widest picture; a longer title is cut with an ellipsis rather than the picture widened.
MAX_WIDTH = 1600


def _fit(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, room: float
) -> str:
    """``text`` cut with an ellipsis to ``room`` pixels."""
    if draw.textlength(text, font=font) <= room:
        return text
    while text and draw.textlength(text + "…", font=font) > room:
        text = text[:-1]
    return text + "…"


def dice_box_plot_png(groups: Mapping[str, Mapping[str, Sequence[float]]], *, title: str = "") -> bytes:
    """PNG bytes: for each structure (name -> {group -> Dice values}), one box per group.

    The picture is as wide as its structures, its title and its legend need (nothing is clipped),
    up to ``MAX_WIDTH``, past which the title is cut with an ellipsis."""
    structures = list(groups)
    font = ImageFont.load_default(size=13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title = title or "Dice per structure"
    wanted = max(
        LEFT + RIGHT + WIDTH_PER_STRUCTURE * max(len(structures), 1),
        LEFT + RIGHT + measure.textlength(title, font=font),
        LEFT + RIGHT + 16 + max(measure.textlength(g, font=font) for g in GROUP_COLOURS),
    )
    width = int(min(MAX_WIDTH, max(wanted, LEFT + RIGHT + WIDTH_PER_STRUCTURE)))
    image = Image.new("RGB", (width, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((LEFT, 10), _fit(draw, title, font, width - LEFT - RIGHT), fill="black", font=font)
    for tick in np.linspace(0, 1, 6):
        y = _y(float(tick))
        draw.line([(LEFT, y), (width - RIGHT, y)], fill=(225, 225, 225))
        draw.text((LEFT - 35, y - 8), f"{tick:.1f}", fill="black", font=font)
    draw.line([(LEFT, TOP), (LEFT, HEIGHT - BOTTOM)], fill="black")
    if not structures:
        draw.text(
            (LEFT + 10, HEIGHT / 2), "no Dice figures yet: compute a consensus first", fill="black", font=font
        )
    names = list(GROUP_COLOURS)
    box_width = (WIDTH_PER_STRUCTURE - 30) / len(names)
    for index, structure in enumerate(structures):
        x0 = LEFT + index * WIDTH_PER_STRUCTURE + 15
        for g, group in enumerate(names):
            values = groups[structure].get(group, [])
            if values:
                _box(draw, x0 + g * box_width + 2, box_width - 4, values, GROUP_COLOURS[group])
        label = _fit(draw, by_name(structure).display_name, font, WIDTH_PER_STRUCTURE - 20)
        draw.text((x0, HEIGHT - BOTTOM + 8), label, fill="black", font=font)
    for g, group in enumerate(names):
        y = HEIGHT - 30 + g * 14 - 7
        draw.rectangle([(LEFT, y), (LEFT + 10, y + 10)], fill=GROUP_COLOURS[group])
        draw.text((LEFT + 16, y - 1), group, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
