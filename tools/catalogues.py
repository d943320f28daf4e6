"""Write the collector's gettext catalogues: every string of the sources, French by hand.

The sources are the console's templates and the modules whose sentences reach a
reader (reasons, webhook summaries, the console's labels).

    python tools/catalogues.py

English (the source language) gets msgstr = msgid. French translations come
from collector/locale/fr/LC_MESSAGES/tocsin.po itself: strings new in
the sources are added with an empty msgstr (the catalogue test then fails
until someone translates them), strings gone from the sources are dropped.
"""

from __future__ import annotations

from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

from tocsin.collector.i18n import DOMAIN, LANGUAGES, catalogue_path, messages_in_sources


def main() -> None:
    ids = sorted(set(messages_in_sources()))
    for code in LANGUAGES:
        path = catalogue_path(code)
        known: dict[str, str] = {}
        if path.exists() and path.stat().st_size:
            with path.open("rb") as fh:
                known = {m.id: m.string for m in read_po(fh) if m.id and isinstance(m.id, str)}
        cat = Catalog(locale=code, domain=DOMAIN, project="tocsin", charset="utf-8")
        for msgid in ids:
            cat.add(msgid, msgid if code == "en" else known.get(msgid, ""))
        with Path(path).open("wb") as fh:
            write_po(fh, cat, width=100, omit_header=False, sort_output=True)
        print(f"{path}: {len(ids)} messages")


if __name__ == "__main__":
    main()
