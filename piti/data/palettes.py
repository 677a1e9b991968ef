"""Label-map palettes: the colour and the name of each class, per dataset.

COCO-Stuff and ADE20K are coloured with pix2pixHD's bit-interleaved ``labelcolormap`` as the official
PITI preprocessing does (label i gets the colour of id i + 1; label 255 = unlabelled stays black); the
synthetic world has its own ten colours. :data:`PALETTES` maps each palette's name to (colours, names).
"""

from __future__ import annotations

import numpy as np

from piti.errors import ConfigError


def labelcolormap(n: int) -> np.ndarray:
    """pix2pixHD's bit-interleaved colour map as the official PITI preprocessing uses it.

    Label ``i`` gets the colour of id ``i + 1``: bit 3k of the id goes to the
    red channel's bit 7-k, bit 3k+1 to green, bit 3k+2 to blue (7 rounds).
    Returns (n, 3) uint8; all colours are distinct and none is black.
    """
    ids = np.arange(1, n + 1, dtype=np.int64)
    rgb = np.zeros((n, 3), dtype=np.int64)
    for j in range(7):
        for c in range(3):
            rgb[:, c] |= ((ids >> (3 * j + c)) & 1) << (7 - j)
    return rgb.astype(np.uint8)


# COCO-Stuff 164k: the 182 ids of `stuffthingmaps` (91 things incl. 11 unused, then 91 stuff)
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "hair brush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

# ADE20K SceneParsing (ADEChallengeData2016): annotation value v in 1..150 is class v-1; 0 ("other") -> 255
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

# the synthetic world (piti.data.synth): name and label-map colour of each class
SYNTH_CLASSES = ("sky", "sea", "sand", "grass", "mountain", "snow", "tree", "house", "road", "boat")
SYNTH_PALETTE = np.array(
    [
        (110, 180, 255),  # sky: light blue
        (20, 60, 170),  # sea: deep blue
        (240, 210, 120),  # sand: yellow
        (70, 190, 60),  # grass: green
        (130, 95, 70),  # mountain: brown
        (235, 235, 250),  # snow: white
        (10, 100, 40),  # tree: dark green
        (210, 40, 40),  # house: red
        (100, 100, 100),  # road: grey
        (250, 140, 20),  # boat: orange
    ],
    dtype=np.uint8,
)

# The official preprocessing colours label index 182 too: (128, 224, 192), the label after the 182 classes,
# which COCO-Stuff's label list names "other" (id 183). Official label maps may hold it, so it is a class here.
COCO_STUFF_CLASSES = COCO_STUFF_CLASSES + ("other",)
COCO_STUFF_PALETTE = labelcolormap(len(COCO_STUFF_CLASSES))
# ADE20K: the same pix2pixHD colour map (the PITI/SPADE family colours ADE20K with it too);
# the well-known CSAIL palette is not used because it repeats a colour (classes 6 and 48).
ADE20K_PALETTE = labelcolormap(150)

PALETTES = {
    "coco-stuff": (COCO_STUFF_PALETTE, COCO_STUFF_CLASSES),
    "ade20k": (ADE20K_PALETTE, ADE20K_CLASSES),
    "synth": (SYNTH_PALETTE, SYNTH_CLASSES),
}
for _name, (_pal, _cls) in PALETTES.items():
    assert len(_pal) == len(_cls), _name
    assert len(np.unique(_pal, axis=0)) == len(_pal) and not (_pal == 0).all(1).any(), _name


def get_palette(palette) -> np.ndarray:
    """A palette given by name (``"coco-stuff"``, ``"ade20k"``, ``"synth"``) or as an (n, 3) array."""
    if isinstance(palette, str):
        if palette not in PALETTES:
            raise ConfigError(f"unknown palette {palette!r}; expected one of {sorted(PALETTES)} or an (n, 3) array")
        return PALETTES[palette][0]
    pal = np.asarray(palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or len(pal) > 255 or pal.min() < 0 or pal.max() > 255:
        raise ConfigError(f"a palette must be an (n, 3) array of 0..255 colours with n <= 255, got shape {pal.shape}")
    return pal.astype(np.uint8)


def _palette_name(palette) -> str:
    return f"{palette!r} palette" if isinstance(palette, str) else f"{len(get_palette(palette))}-colour palette"
