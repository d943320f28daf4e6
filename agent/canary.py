"""Canaries: decoy documents planted in the watched trees; touching one is certain evidence.

Contract: ``plant(roots, names)`` makes sure every name of ``names`` exists as a
valid document (real xlsx / docx / pdf bytes, plausible town-hall content) at
the top of every root and in each first-level folder (at most
``MAX_DIRS_PER_ROOT`` folders per root), creating only the missing ones and
never overwriting a file. It returns the absolute paths of every canary (new
and existing). A canary gets the owner, group and mode of the directory's other
files (``ownership_like``), whatever the agent's umask, so the share's users,
and an encryptor running as one of them, can open and rewrite it; a canary an
older agent left root-owned 0600 is given to them too. Planting goes through
the directory's file descriptor, never follows a symlink and never opens
anything but a regular file (needs CAP_CHOWN, and CAP_DAC_OVERRIDE for folders
the agent does not own). No user works on these files: a write, delete or rename of one
(reads do not count) is evidence no model is needed for, and fires the local
tripwire. ``is_canary_name(name)`` tells backups and the agent which names are
canaries (see docs/canaries.md to exclude them from backups).
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_NAMES = (
    "~Budget_2024_CONFIDENTIEL.xlsx",
    "~Liste_agents_salaires.docx",
    "~Releve_compte_tresorerie.pdf",
)
MAX_DIRS_PER_ROOT = 64
# Files looked at to learn a directory's owner and mode.
SAMPLE_FILES = 64


def _xlsx() -> bytes:
    import zipfile  # here: the agent needs it only when planting

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            (
                '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.'
                "openxmlformats.org/"
                'package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.'
                'openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType='
                '"application/xml"/><Override PartName="/xl/workbook.xml" '
                'ContentType="application/'
                'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName='
                '"/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-'
                'officedocument.spreadsheetml.worksheet+xml"/></Types>'
            ),
        )
        z.writestr(
            "_rels/.rels",
            (
                '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
                'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
                'schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
                'Target="xl/workbook.xml"/></Relationships>'
            ),
        )
        z.writestr(
            "xl/workbook.xml",
            (
                '<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.'
                'org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/'
                'officeDocument/2006/relationships"><sheets><sheet name="Budget" sheetId="1" '
                'r:id="rId1"/></sheets></workbook>'
            ),
        )
        z.writestr(
            "xl/_rels/workbook.xml.rels",
            (
                '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
                'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
                'schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
                'Target="worksheets/sheet1.xml"/></Relationships>'
            ),
        )
        rows = "".join(
            f'<row r="{i}"><c r="A{i}" t="inlineStr"><is><t>{label}</t></is></c>'
            f'<c r="B{i}"><v>{amount}</v></c></row>'
            for i, (label, amount) in enumerate(
                [
                    ("Voirie", 182400),
                    ("Ecoles", 96350),
                    ("Personnel", 412900),
                    ("Cantine", 58100),
                    ("Eclairage public", 23750),
                ],
                start=1,
            )
        )
        z.writestr(
            "xl/worksheets/sheet1.xml",
            (
                '<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.'
                f'openxmlformats.org/spreadsheetml/2006/main"><sheetData>{rows}</sheetData></worksheet>'
            ),
        )
    return buf.getvalue()


def _docx() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(
            "[Content_Types].xml",
            (
                '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.'
                "openxmlformats.org/"
                'package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.'
                'openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType='
                '"application/xml"/><Override PartName="/word/document.xml" '
                'ContentType="application/'
                'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
            ),
        )
        z.writestr(
            "_rels/.rels",
            (
                '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
                'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
                'schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
                'Target="word/document.xml"/></Relationships>'
            ),
        )
        paras = "".join(
            f"<w:p><w:r><w:t>{t}</w:t></w:r></w:p>"
            for t in (
                "Liste des agents communaux et remunerations 2024",
                "Service technique : 4 agents",
                "Ecoles et periscolaire : 6 agents",
                "Secretariat de mairie : 2 agents",
                "Document interne - ne pas diffuser",
            )
        )
        z.writestr(
            "word/document.xml",
            (
                '<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.'
                f'openxmlformats.org/wordprocessingml/2006/main"><w:body>{paras}</w:body></w:document>'
            ),
        )
    return buf.getvalue()


def _pdf() -> bytes:
    text = b"BT /F1 12 Tf 72 720 Td (Releve de compte - tresorerie communale 2024) Tj ET"
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(text)).encode() + b" >>\nstream\n" + text + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


CONTENT = {"xlsx": _xlsx, "docx": _docx, "pdf": _pdf}


def content_for(name: str) -> bytes:
    """Valid document bytes for a canary called ``name`` (by its extension)."""
    ext = name.rsplit(".", 1)[-1].lower()
    if ext not in CONTENT:
        raise ValueError(f"canary {name!r}: extension must be one of {sorted(CONTENT)}")
    return CONTENT[ext]()


def is_canary_name(name: str, names: tuple[str, ...] = DEFAULT_NAMES) -> bool:
    return os.path.basename(name) in names


@dataclass(frozen=True)
class Ownership:
    """The owner, group and permission bits a canary gets in one directory."""

    uid: int
    gid: int
    mode: int


def ownership_like(
    directory: str | os.PathLike[str], names: tuple[str, ...] = DEFAULT_NAMES
) -> Ownership:
    """What the directory's other files look like: the most common (owner, group, mode) of its
    regular files (up to ``SAMPLE_FILES``, canaries left out); in a directory without files, its
    own owner and group and its read/write bits (a folder 2770 gives 0660)."""
    seen: Counter[Ownership] = Counter()
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name in names:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    seen[Ownership(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode) & 0o666)] += 1
                    if sum(seen.values()) >= SAMPLE_FILES:
                        break
    except OSError:
        pass
    if seen:
        return seen.most_common(1)[0][0]
    st = os.stat(directory)
    return Ownership(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode) & 0o666)


def _plant_one(directory: Path, name: str, names: tuple[str, ...]) -> bool:
    """Make sure ``directory/name`` is a canary owned like its neighbours (see contract)."""
    try:
        like = ownership_like(directory, names)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("cannot plant canary %s: %s", directory / name, exc.strerror)
        return False
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                log.warning("canary %s exists and is not a regular file", directory / name)
                return False
            # Planted root-only by an older agent: give it to the share's users.
            if st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600 and like.uid != 0:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dfd)  # fmt: skip
                try:
                    _own(fd, like)
                finally:
                    os.close(fd)
            return True
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
        try:
            os.write(fd, content_for(name))
            _own(fd, like)
        finally:
            os.close(fd)
        return True
    except OSError as exc:
        log.warning("cannot plant canary %s: %s", directory / name, exc.strerror)
        return False
    finally:
        os.close(dfd)


def _own(fd: int, like: Ownership) -> None:
    # Mode first, while the file is still ours (no CAP_FOWNER needed); then the owner (CAP_CHOWN).
    os.fchmod(fd, like.mode)
    os.fchown(fd, like.uid, like.gid)


def plant(roots: list[str], names: tuple[str, ...] = DEFAULT_NAMES) -> list[str]:
    """Create the missing canaries (see module contract); returns every canary path."""
    paths: list[str] = []
    for root in roots:
        base = Path(root).resolve()
        dirs = [base]
        try:
            subs = sorted(
                e.path
                for e in os.scandir(base)
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
            )
        except OSError:
            subs = []
        dirs += [Path(s) for s in subs[:MAX_DIRS_PER_ROOT]]
        for d in dirs:
            for name in names:
                if _plant_one(d, name, names):
                    paths.append(str(d / name))
    return paths
