"""Why an alert fired, in words a town hall's administrator reads at 3 a.m.

``explain_decision(d, top_features)`` returns a few plain sentences: what was
seen (evidence with counts, over which horizon), which process did it, example
paths, and which measurements made the window unusual compared with normal
activity (the model's top features, named in words). Pure: text from the
decision's reasons and the scorer's explanation only.
"""

from __future__ import annotations

from collections.abc import Sequence

from tocsin.collector.decide import Decision

_HORIZON = {
    "10w": "over the last 10 windows",
    "60s": "over the last minute",
    "1h": "over the last hour",
}
_EVIDENCE = {
    "type_destroyed": "{n} files that had a recognisable type (document, image, archive) "
    "no longer do",
    "encoded_random": "{n} files were rewritten as encoded random text (base64 or hex of "
    "encrypted data)",
    "encrypted_twins": "{n} files were replaced by an encrypted copy next to them and the "
    "original deleted",
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


def evidence_sentences(reasons: Sequence[str]) -> list[str]:
    """One sentence per reason, in words."""
    out = []
    for reason in reasons:
        head, *rest = reason.split(":")
        if head in _EVIDENCE:
            n = rest[0] if rest else "?"
            text = _EVIDENCE[head].format(n=n)
            if len(rest) > 1:
                text += " " + _HORIZON.get(rest[1], rest[1])
            else:
                text += " within one window"
            out.append(text)
        elif head == "new_extension_spreading" and len(rest) >= 2:
            out.append(
                f"the new extension {rest[0]} appeared in {rest[1].removesuffix('dirs')} "
                "directories"
            )
        elif head == "ransom_note" and len(rest) >= 2:
            out.append(
                f"a file named {rest[0]} appeared in {rest[1].removesuffix('dirs')} "
                "directories (a ransom note does that)"
            )
        elif head == "canary_touched":
            out.append("a canary (decoy) file was modified: nothing legitimate touches those")
        elif head == "tripwire":
            out.append(f"the agent's own tripwire fired ({':'.join(rest)})")
        elif head == "anomaly_score" and rest:
            out.append(f"the activity was unusual for this server (anomaly score {rest[0]})")
        elif head == "events_dropped" and rest:
            out.append(f"{rest[0]} file events were lost (the agent could not keep up)")
    return out


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
