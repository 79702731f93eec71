"""The study QC picture fits its title and legend at any study name length (nothing clipped)."""

from __future__ import annotations

import io
from typing import cast

from PIL import Image, ImageDraw, ImageFont

from review.plots import LEFT, MAX_WIDTH, RIGHT, dice_box_plot_png

GROUPS = {"liver": {"annotator vs annotator": [0.9, 0.92, 0.88], "model vs annotator": [0.91, 0.9, 0.93]}}


def _picture(title: str) -> Image.Image:
    return Image.open(io.BytesIO(dice_box_plot_png(GROUPS, title=title)))


def _ink_columns(image: Image.Image, top: int, bottom: int) -> int:
    """The rightmost column with dark pixels between rows ``top`` and ``bottom``."""
    gray = image.convert("L").crop((0, top, image.width, bottom))
    # An "L" picture's pixels are single ints.
    darkest = [min(cast(int, gray.getpixel((x, y))) for y in range(gray.height)) for x in range(gray.width)]
    dark = [x for x, value in enumerate(darkest) if value < 128]
    return max(dark) if dark else -1


def test_a_long_study_name_widens_the_picture_so_the_title_is_whole() -> None:
    title = "Dice per structure: Flank tumours, cohort 2 treated with the long-named compound"
    image = _picture(title)
    font = ImageFont.load_default(size=13)
    needed = LEFT + RIGHT + ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)

    assert image.width >= needed
    assert _ink_columns(image, 5, 30) < image.width - RIGHT + 2  # the title ends inside the picture


def test_an_absurdly_long_name_is_cut_with_an_ellipsis_not_clipped() -> None:
    image = _picture("Dice per structure: " + "very long study name " * 40)

    assert image.width == MAX_WIDTH
    assert _ink_columns(image, 5, 30) < image.width - RIGHT + 2


def test_the_legend_fits_beside_a_single_structure() -> None:
    image = _picture("Dice")

    assert _ink_columns(image, image.height - 40, image.height) < image.width - 2
