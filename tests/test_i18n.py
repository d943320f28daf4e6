"""Both catalogues hold every string of the sources, translated; French reaches the reader."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po
from transport_procs import CollectorProc, free_port, wait_for

from tocsin.collector.explain import evidence_sentences
from tocsin.collector.i18n import LANGUAGES, Language, catalogue_path, messages_in_sources
from tocsin.collector.reasons import Reason

BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).with_name("fixtures")
PLACEHOLDER = re.compile(r"%\(\w+\)s|\{\w+\}")


@pytest.mark.parametrize("code", LANGUAGES)
def test_every_source_string_is_translated(code: str) -> None:
    wanted = set(messages_in_sources())
    assert len(wanted) > 80  # the extraction itself works
    with catalogue_path(code).open("rb") as fh:
        catalog = {m.id: m.string for m in read_po(fh) if m.id}
    missing = sorted(wanted - set(catalog))
    untranslated = sorted(i for i in wanted & set(catalog) if not catalog[i])
    assert not missing, f"{code}: not in the catalogue (run tools/catalogues.py): {missing}"
    assert not untranslated, f"{code}: untranslated: {untranslated}"
    for msgid in wanted:
        assert sorted(PLACEHOLDER.findall(msgid)) == sorted(PLACEHOLDER.findall(catalog[msgid])), (
            code,
            msgid,
        )


def test_reasons_read_in_french() -> None:
    fr = Language.load("fr")
    (sentence,) = evidence_sentences([Reason.parse("type_destroyed:42:60s")], fr.gettext)
    assert sentence == (
        "42 fichiers qui avaient un type reconnaissable (document, image, archive)"
        " ne l'ont plus sur la dernière minute"
    )
    assert fr.when(1_700_000_000) == "14 nov. 2023, 22:13:20"
    assert fr.number(1234.5) == "1\u202f234,5"


def test_a_french_collector_writes_its_webhook_summaries_in_french(tmp_path: Path) -> None:
    """language = "fr": the chat message of a replayed attack reads in French."""
    from receiver import WebhookReceiver

    conf = tmp_path / "collector.toml"
    conf.write_text('insecure = true\nlanguage = "fr"\n', encoding="utf-8")
    with WebhookReceiver() as hooks:
        proc = CollectorProc(
            tmp_path / "c.db",
            tmp_path / "collector.log",
            f"127.0.0.1:{free_port()}",
            ["--config", str(conf), "--webhook", hooks.url, "--respond", "dry-run"],
        )
        listen = proc.start()
        try:
            replay = [str(BIN / "tocsin"), "replay", str(FIXTURES / "encrypt-inplace.jsonl")]
            res = subprocess.run(
                [*replay, "--collector", listen, "--insecure", "--speed", "0"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode == 0, res.stderr
            wait_for("an alert", lambda: hooks.of("alert"))
        finally:
            proc.stop()
        summary = hooks.of("alert")[0]["summary"]
    assert summary.startswith("Critique sur fixture-encrypt-inplace : "), summary
    assert "fichiers ont perdu leur type" in summary and "tocsin : suspension simulé" in summary
