"""Why an alert fired, in words a town hall's administrator reads at 3 a.m.

``explain_decision(d, top_features)`` returns a few plain sentences: what was
seen (evidence with counts, over which horizon), which process did it, example
paths, and which measurements made the window unusual compared with normal
activity (the model's top features, named in words). Pure: text from the
decision's reasons and the scorer's explanation only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from tocsin.collector.decide import Decision
from tocsin.collector.reasons import Reason

Gettext = Callable[[str], str]


def N_(message: str) -> str:
    """Marks a message for the gettext catalogues; translated where it is used."""
    return message


def same_text(message: str) -> str:
    """The identity gettext: English, the source language."""
    return message


_HORIZON = {
    "10w": N_("over the last 10 windows"),
    "60s": N_("over the last minute"),
    "1h": N_("over the last hour"),
}
_EVIDENCE = {
    "type_destroyed": N_(
        "{n} files that had a recognisable type (document, image, archive) no longer do"
    ),
    "encoded_random": N_(
        "{n} files were rewritten as encoded random text (base64 or hex of encrypted data)"
    ),
    "encrypted_twins": N_(
        "{n} files were replaced by an encrypted copy next to them and the original deleted"
    ),
}
_FEATURES = {
    "files_written_rate": "files written per second",
    "files_deleted_rate": "files deleted per second",
    "files_renamed_rate": "files renamed per second",
    "dirs_touched_rate": "directories touched per second",
    "extensions_touched": "number of different extensions written",
    "new_extensions": "extensions never seen on this server",
    "top_new_extension_dirs": "directories reached by a new extension",
    "high_entropy_frac": "share of written files that look random",
    "type_destroyed_rate": "files losing their type per second",
    "mean_entropy": "randomness of written data",
    "incompressible_frac": "share of written files that cannot be compressed",
    "repeated_name_dirs": "directories with the same new file name",
    "encrypted_twins_rate": "encrypted copies replacing originals per second",
    "bytes_written_rate": "bytes written per second",
    "events_dropped_rate": "file events lost per second",
    "encoded_random_rate": "files rewritten as encoded random text per second",
}


def evidence_sentences(reasons: Iterable[Reason], _: Gettext = same_text) -> list[str]:
    """One sentence per reason, in words (``_``: the reader's language's gettext)."""
    out = []
    for r in reasons:
        sentence = _sentence(r, _)
        if sentence:
            out.append(sentence)
    return out


def _sentence(r: Reason, _: Gettext) -> str:
    """``r`` in words, or "" for a reason the reader needs no sentence for."""
    if r.kind in _EVIDENCE:
        text = _(_EVIDENCE[r.kind]).format(n=r.files)
        if r.horizon:
            return text + " " + (_(_HORIZON[r.horizon]) if r.horizon in _HORIZON else r.horizon)
        return text + " " + _("within one window")
    match r.kind:
        case "new_extension_spreading":
            return _("the new extension {ext} appeared in {n} directories").format(
                ext=r.name, n=r.dirs
            )
        case "ransom_note":
            return _(
                "a file named {name} appeared in {n} directories (a ransom note does that)"
            ).format(name=r.name, n=r.dirs)
        case "canary_touched":
            return _("a canary (decoy) file was modified: nothing legitimate touches those")
        case "tripwire":
            return _("the agent's own tripwire fired ({why})").format(why=r.detail)
        case "anomaly_score":
            return _("the activity was unusual for this server (anomaly score {score})").format(
                score=f"{r.score:.2f}"
            )
        case "read_sweep":
            return _(
                "{files} files were read across {dirs} directories (a copy of the share)"
            ).format(files=r.files, dirs=r.dirs)
        case "archive_created":
            return _("{n} archives were created").format(n=r.count)
        case "net_out_mb":
            return _("{n} MB were sent out over the network").format(n=r.count)
        case "inotify_overflow":
            return _("the kernel dropped file events {n} times").format(n=r.count)
        case "watch_limit":
            return _("{n} directories could not be watched").format(n=r.count)
        case "events_dropped":
            return _("{n} file events were lost (the agent could not keep up)").format(n=r.count)
    return ""


def explain_decision(d: Decision, top_features: Sequence[tuple[str, float]] = ()) -> str:
    """The alert's explanation (see module docstring)."""
    parts = []
    seen = evidence_sentences(d.reasons)
    if seen:
        parts.append("Seen: " + "; ".join(seen) + ".")
    if d.process is not None:
        parts.append(
            f"Written by {d.process.name or '?'} (pid {d.process.pid}, {d.process.exe or '?'}), "
            f"process tree {d.root_pid}."
        )
        if d.process.smb_client_addr:
            user = f" (SMB user {d.process.smb_user})" if d.process.smb_user else ""
            parts.append(
                f"It is the Samba worker of the client {d.process.smb_client_addr}{user}: "
                "the encryption comes from that workstation."
            )
    else:
        parts.append("The writing process could not be identified.")
    if d.example_paths:
        parts.append("For example: " + ", ".join(d.example_paths[:3]) + ".")
    moved = [_FEATURES.get(name, name) for name, _ in top_features[:3]]
    if moved:
        parts.append("Most unusual compared with normal activity: " + ", ".join(moved) + ".")
    if d.severity == "critical":
        parts.append(
            "Critical: the activity destroys files (or touched a canary), so tocsin "
            "treats it as ransomware."
        )
    else:
        parts.append(
            "Warning only: unusual activity without proof that files are being "
            "destroyed (a large backup or copy looks like this)."
        )
    return " ".join(parts)
