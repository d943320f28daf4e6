"""Both catalogues hold every string of the console's sources, translated, placeholders intact."""

from __future__ import annotations

import re

import pytest
from babel.messages.pofile import read_po

from tocsin.collector.console.i18n import LANGUAGES, Language, catalogue_path, messages_in_sources
from tocsin.collector.explain import evidence_sentences

PLACEHOLDER = re.compile(r"%\(\w+\)s|\{\w+\}")


@pytest.mark.parametrize("code", LANGUAGES)
def test_every_source_string_is_translated(code: str) -> None:
    wanted = set(messages_in_sources())
    assert len(wanted) > 80  # the extraction itself works
    with catalogue_path(code).open("rb") as fh:
        catalog = {m.id: m.string for m in read_po(fh) if m.id}
    missing = sorted(wanted - set(catalog))
    untranslated = sorted(i for i in wanted & set(catalog) if not catalog[i])
    assert not missing, f"{code}: not in the catalogue (run tools/console_catalogues.py): {missing}"
    assert not untranslated, f"{code}: untranslated: {untranslated}"
    for msgid in wanted:
        assert sorted(PLACEHOLDER.findall(msgid)) == sorted(PLACEHOLDER.findall(catalog[msgid])), (
            code,
            msgid,
        )


def test_reasons_read_in_french() -> None:
    fr = Language.load("fr")
    (sentence,) = evidence_sentences(["type_destroyed:42:60s"], fr.gettext)
    assert sentence == (
        "42 fichiers qui avaient un type reconnaissable (document, image, archive)"
        " ne l'ont plus sur la dernière minute"
    )
    assert fr.when(1_700_000_000) == "14 nov. 2023, 22:13:20"
    assert fr.number(1234.5) == "1\u202f234,5"
