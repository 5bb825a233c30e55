"""Class names as people read them: ``Tomato___Early_blight`` -> "Tomato — early blight".

PlantVillage spells a class ``<crop>___<condition>`` with underscores for spaces. The page, the
model card, the review grid and ``leaf-train inbox`` all show the same readable form, so it is
written once here; the raw label stays the key everywhere (API, contract, data prefix).
"""

from __future__ import annotations

import re

_SEPARATOR = "___"
_SPACES = re.compile(r"[\s_]+")


def _words(text: str) -> str:
    return _SPACES.sub(" ", text).strip(" ")


def _lower_word(word: str) -> str:
    # "Early" and "(Black" -> "early", "(black"; "TYLCV" and "PlantVillage" keep their capitals:
    # names, not prose.
    letters = [c for c in word if c.isalpha()]
    return (
        word.lower()
        if letters and letters[0].isupper() and all(c.islower() for c in letters[1:])
        else word
    )


def readable_label(label: str) -> str:
    """The label written for people; never empty (falls back to the raw label).

    >>> readable_label("Tomato___Early_blight")
    'Tomato — early blight'
    >>> readable_label("Corn_(maize)___Common_rust_")
    'Corn (maize) — common rust'
    >>> readable_label("Pepper,_bell___healthy")
    'Pepper, bell — healthy'
    >>> readable_label("leaf_spot")
    'Leaf spot'
    """
    crop, sep, condition = label.partition(_SEPARATOR)
    if sep and _words(crop) and _words(condition):
        prose = " ".join(_lower_word(w) for w in _words(condition).split(" "))
        return f"{_words(crop)} — {prose}"
    text = _words(label.replace(_SEPARATOR, " "))
    return text[:1].upper() + text[1:] if text else label
