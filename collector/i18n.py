"""The collector's languages (console and webhook summaries): gettext catalogues read from
``locale/``, Babel for dates and numbers.

Contract: ``Language.load(code)`` reads ``locale/<code>/LC_MESSAGES/tocsin.po``
(English is the source language and has a catalogue too, so a missing string
shows in both). ``gettext``/``ngettext`` translate; ``when(t_s)`` and
``number(n)`` format for the language; unknown codes raise ``ValueError``.
The catalogues are compiled in memory when loaded: nothing binary is kept in
the repository. ``messages_in_sources()`` extracts every translatable string
of the console's templates and of the modules whose sentences it shows, which
is what the catalogue test compares against.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from babel import Locale
from babel.dates import format_datetime
from babel.messages.extract import extract_from_file
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import Translations

LANGUAGES = ("en", "fr")
DOMAIN = "tocsin"
HERE = Path(__file__).resolve().parent
LOCALE_DIR = HERE / "locale"
TEMPLATES = HERE / "console" / "templates"
# Python modules whose sentences reach a reader (reasons, summaries, the console's labels).
SOURCE_MODULES = (
    HERE / "explain.py",
    HERE / "respond.py",
    HERE / "console" / "web.py",
    HERE / "console" / "backend.py",
)
KEYWORDS = {"_": None, "N_": None, "gettext": None, "ngettext": (1, 2)}


def catalogue_path(code: str) -> Path:
    return LOCALE_DIR / code / "LC_MESSAGES" / f"{DOMAIN}.po"


@dataclass(frozen=True)
class Language:
    code: str
    translations: Translations

    @classmethod
    def load(cls, code: str) -> Language:
        if code not in LANGUAGES:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, not {code!r}")
        with catalogue_path(code).open("rb") as fh:
            catalog = read_po(fh, locale=code, domain=DOMAIN)
        mo = io.BytesIO()
        write_mo(mo, catalog)
        mo.seek(0)
        return cls(code, Translations(mo, domain=DOMAIN))

    def gettext(self, message: str) -> str:
        return str(self.translations.gettext(message))

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return str(self.translations.ngettext(singular, plural, n))

    def when(self, t_s: float | None) -> str:
        """A UTC time as the language writes it, or an em dash for none."""
        if not t_s:
            return "—"
        stamp = dt.datetime.fromtimestamp(t_s, dt.UTC)
        return format_datetime(stamp, "medium", tzinfo=dt.UTC, locale=Locale.parse(self.code))

    def number(self, n: float) -> str:
        return str(format_decimal(n, locale=Locale.parse(self.code)))


def messages_in_sources() -> Iterator[str]:
    """Every msgid in the console's templates and in ``SOURCE_MODULES``."""
    for template in sorted(TEMPLATES.glob("*.html")):
        for _lineno, message, _comments, _ctx in extract_from_file(
            "jinja2", str(template), keywords=KEYWORDS
        ):
            yield from _ids(message)
    for module in SOURCE_MODULES:
        for _lineno, message, _comments, _ctx in extract_from_file(
            "python", str(module), keywords=KEYWORDS
        ):
            yield from _ids(message)


def _ids(message: str | tuple[str, ...]) -> Iterator[str]:
    if isinstance(message, tuple):
        yield from (m for m in message if m)
    else:
        yield message
