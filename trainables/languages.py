"""The one table of languages and language families used everywhere in the project.

Codes are ISO 639-1. Real XTD10 files name Japanese ``jp``; :func:`canonical_language`
maps that (and any other alias) onto the canonical code, and :data:`XTD_FILE_CODES`
gives the code each language uses in XTD10 file names.
"""

from __future__ import annotations

from types import MappingProxyType

# Canonical order: XTD10's eleven languages, grouped by family.
LANGUAGE_FAMILIES: MappingProxyType = MappingProxyType(
    {
        "en": "germanic",
        "de": "germanic",
        "fr": "romance",
        "es": "romance",
        "it": "romance",
        "pl": "slavic",
        "ru": "slavic",
        "tr": "turkic",
        "zh": "sinitic",
        "ja": "japonic",
        "ko": "koreanic",
    }
)

LANGUAGES: tuple[str, ...] = tuple(LANGUAGE_FAMILIES)

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(LANGUAGE_FAMILIES.values()))

# Codes as they appear in XTD10 file names (``test_1kcaptions_{code}.txt``).
XTD_FILE_CODES: MappingProxyType = MappingProxyType({lang: ("jp" if lang == "ja" else lang) for lang in LANGUAGES})

_ALIASES = {"jp": "ja"}


class UnknownLanguageError(ValueError):
    """Raised for a language code outside the table above."""


def canonical_language(code: str) -> str:
    """Return the canonical code for ``code`` (``jp`` -> ``ja``), or raise UnknownLanguageError."""
    lang = _ALIASES.get(code.strip().lower(), code.strip().lower())
    if lang not in LANGUAGE_FAMILIES:
        raise UnknownLanguageError(
            f"unknown language code {code!r}; known codes: {', '.join(LANGUAGES)} (XTD10's 'jp' is accepted for 'ja')"
        )
    return lang


def family_of(lang: str) -> str:
    """Family name (lower case) of a canonical or aliased language code."""
    return LANGUAGE_FAMILIES[canonical_language(lang)]


def languages_in(family: str) -> tuple[str, ...]:
    """Languages of ``family`` in canonical order."""
    return tuple(lang for lang, fam in LANGUAGE_FAMILIES.items() if fam == family)
