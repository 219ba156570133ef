"""The app's colours and marker shapes: one fixed colour per class, per model and per exit on every chart, chosen
to stay apart under colour-vision deficiencies, and a shape beside each colour so no category is told by colour (or
lightness) alone.

Classes: Paul Tol's colour-blind-safe qualitative scheme as Plotly ships it (`plotly.colors.qualitative.Safe`,
11 colours), cycled with a new marker shape after every 11 classes. Models and exits: Okabe & Ito's palette
(Okabe and Ito, "Color Universal Design", 2008) without its black, which vanishes on a dark background.
"""

from __future__ import annotations

from collections.abc import Sequence

from plotly.colors import qualitative

CLASS_COLOURS: tuple[str, ...] = tuple(qualitative.Safe)
# ordered so that neighbours in a list differ in hue, not only in lightness
# (its yellow is left out too: a line in it is barely visible on white)
OKABE_ITO: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9")
SYMBOLS: tuple[str, ...] = (
    "circle",
    "square",
    "diamond",
    "triangle-up",
    "cross",
    "triangle-down",
    "star",
    "hexagon",
    "pentagon",
    "x",
)
CORRECT = ("#0072B2", "circle")  # (colour, marker shape)
WRONG = ("#D55E00", "x")
HIGHLIGHT = "#D55E00"  # the one bar or cell the page is about (the exit an image leaves at, a predicted class)
OTHER = "#56B4E9"


def class_style(i: int) -> tuple[str, str]:
    """(colour, marker shape) of class i: fixed for a class on every chart; neighbouring classes differ in shape
    too, so classes whose colours are close (ship and truck) stay apart."""
    return CLASS_COLOURS[i % len(CLASS_COLOURS)], SYMBOLS[i % len(SYMBOLS)]


def exit_style(k: int) -> tuple[str, str]:
    """(colour, marker shape) of exit k (0-based)."""
    return OKABE_ITO[k % len(OKABE_ITO)], SYMBOLS[k % len(SYMBOLS)]


def model_colour(label: str, models: Sequence[str]) -> str:
    """The colour of a listed model (by its place in the list, so the same on every page of a session)."""
    i = list(models).index(label) if label in models else len(models)
    return OKABE_ITO[i % len(OKABE_ITO)]
