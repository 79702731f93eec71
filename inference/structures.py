"""The one canonical table of anatomical structures.

Every label number in labseg comes from here: the models (their ``model.json`` lists these ids),
the pipeline, the server's exports, the admin and the viewer (served as JSON at
``/api/structures/``). Nothing else hard-codes label numbers. Pure Python: no Django, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Structure:
    """One anatomical structure: ``id`` is the voxel value in every label map."""

    id: int
    name: str
    display_name: str
    colour: tuple[int, int, int]
    group: str
    #: "single" organs keep their largest component, "paired" ones keep one per body side,
    #: "lesion" structures keep every component above a minimum volume.
    kind: str = "single"

    @property
    def colour_hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.colour)


STRUCTURES: tuple[Structure, ...] = (
    Structure(0, "background", "Background", (0, 0, 0), "background", kind="background"),
    Structure(1, "heart", "Heart", (220, 40, 40), "heart"),
    Structure(2, "lung_left", "Left lung", (120, 190, 250), "lungs", kind="paired"),
    Structure(3, "lung_right", "Right lung", (60, 130, 230), "lungs", kind="paired"),
    Structure(4, "liver", "Liver", (150, 75, 40), "liver"),
    Structure(5, "kidney_left", "Left kidney", (240, 170, 60), "kidneys", kind="paired"),
    Structure(6, "kidney_right", "Right kidney", (200, 120, 20), "kidneys", kind="paired"),
    Structure(7, "spleen", "Spleen", (140, 60, 170), "spleen"),
    Structure(8, "bladder", "Bladder", (240, 230, 80), "bladder"),
    Structure(9, "stomach", "Stomach", (250, 140, 180), "stomach"),
    Structure(10, "intestine", "Intestine", (240, 200, 150), "intestine"),
    Structure(11, "bones", "Bones", (235, 235, 220), "bones"),
    Structure(12, "brain", "Brain", (250, 160, 120), "brain"),
    Structure(13, "spinal_cord", "Spinal cord", (250, 250, 40), "spinal_cord"),
    Structure(14, "tumor", "Tumor", (40, 200, 80), "tumor", kind="lesion"),
    Structure(15, "metastasis", "Metastasis", (255, 0, 255), "metastasis", kind="lesion"),
)

BY_ID: dict[int, Structure] = {s.id: s for s in STRUCTURES}
BY_NAME: dict[str, Structure] = {s.name: s for s in STRUCTURES}
BACKGROUND = BY_NAME["background"]
ORGAN_NAMES: tuple[str, ...] = tuple(s.name for s in STRUCTURES if s.kind in ("single", "paired"))
LESION_NAMES: tuple[str, ...] = tuple(s.name for s in STRUCTURES if s.kind == "lesion")
GROUPS: dict[str, tuple[str, ...]] = {}
for _s in STRUCTURES:
    if _s.kind != "background":
        GROUPS.setdefault(_s.group, ())
        GROUPS[_s.group] = (*GROUPS[_s.group], _s.name)
MAX_ID = max(BY_ID)


def by_id(structure_id: int) -> Structure:
    """The structure with this label value; ``KeyError`` names the unknown id."""
    try:
        return BY_ID[structure_id]
    except KeyError:
        raise KeyError(f"unknown structure id {structure_id}; known ids are 0-{MAX_ID}") from None


def by_name(name: str) -> Structure:
    """The structure with this canonical name (case-insensitive, spaces or dashes allowed)."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    try:
        return BY_NAME[key]
    except KeyError:
        known = ", ".join(s.name for s in STRUCTURES[1:])
        raise KeyError(f"unknown structure {name!r}; known structures are {known}") from None


def as_json() -> list[dict[str, object]]:
    """The table as plain JSON-ready dicts (for the API, the viewer and model.json checks)."""
    return [
        {
            "id": s.id,
            "name": s.name,
            "display_name": s.display_name,
            "colour": s.colour_hex,
            "rgb": list(s.colour),
            "group": s.group,
            "kind": s.kind,
        }
        for s in STRUCTURES
    ]
