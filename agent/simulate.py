"""Simulated workloads on a scratch share: harmless attacks and heavy benign jobs.

Used by ``tocsin-agent drill``, the tests, the fixture recorder and the
evaluation suite. Every function takes the directory it may touch and never
touches anything outside it (paths are resolved and checked). The "encryption"
is a seeded XOR keystream: irreversible-looking bytes on disk, reversible by
anyone with the seed, and no key ever leaves the process.

Run as a process (so it has its own pid for the agent to find and suspend)::

    python -m tocsin.agent.simulate share DIR [--files N] [--seed S]
    python -m tocsin.agent.simulate run STYLE DIR [--rate FILES_PER_S] [--workers N]

STYLE is one of ``ATTACKS`` or ``BENIGN`` below.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import io
import multiprocessing
import os
import random
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tocsin.agent import _linux

NOTE_NAME = "LISEZ-MOI_RESTAURATION.txt"
NOTE_TEXT = "Vos fichiers ont ete chiffres (exercice tocsin, rien n'est perdu).\n"
LOCKED_EXT = ".locked"
MEDUSA_EXT = ".MEDUSA"

DEPARTMENTS = (
    "Urbanisme",
    "Etat-civil",
    "Finances",
    "RH",
    "Marches-publics",
    "Conseil-municipal",
    "Ecoles",
    "Services-techniques",
)
KINDS = ("docx", "xlsx", "pdf", "jpg", "png", "txt", "csv", "odt")


# --------------------------------------------------------------------------
# File contents with a real type signature


def _words(rng: random.Random, n: int) -> str:
    vocab = [
        "deliberation",
        "conseil",
        "municipal",
        "commune",
        "budget",
        "voirie",
        "permis",
        "construire",
        "arrete",
        "maire",
        "adjoint",
        "ecole",
        "cantine",
        "marche",
        "public",
        "facture",
        "mandat",
        "titre",
        "etat",
        "civil",
        "naissance",
        "mariage",
        "deces",
        "urbanisme",
        "parcelle",
        "cadastre",
        "agent",
    ]
    return " ".join(rng.choice(vocab) for _ in range(n))


def _zip_office(rng: random.Random, size: int, kind: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        main = "word/document.xml" if kind in ("docx", "odt") else "xl/worksheets/sheet1.xml"
        z.writestr(main, "<doc>" + _words(rng, max(size // 6, 20)) + "</doc>")
        z.writestr("docProps/thumbnail.jpeg", rng.randbytes(size // 4))
    return buf.getvalue()


def _pdf(rng: random.Random, size: int) -> bytes:
    stream = zlib.compress(_words(rng, max(size // 6, 20)).encode())
    return (
        b"%PDF-1.7\n1 0 obj <</Length "
        + str(len(stream)).encode()
        + b">> stream\n"
        + stream
        + b"\nendstream endobj\ntrailer <</Root 1 0 R>>\n%%EOF\n"
    )


def _jpeg(rng: random.Random, size: int) -> bytes:
    return (
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
        + rng.randbytes(size)
        + b"\xff\xd9"
    )


def _png(rng: random.Random, size: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(size)


def file_content(kind: str, rng: random.Random, size: int) -> bytes:
    """Bytes that carry ``kind``'s real signature, about ``size`` bytes long."""
    if kind in ("docx", "xlsx", "odt"):
        return _zip_office(rng, size, kind)
    if kind == "pdf":
        return _pdf(rng, size)
    if kind == "jpg":
        return _jpeg(rng, size)
    if kind == "png":
        return _png(rng, size)
    if kind == "csv":
        return "\n".join(
            f"{i};{_words(rng, 3)};{rng.randint(0, 99999)}" for i in range(size // 30)
        ).encode()
    return _words(rng, max(size // 6, 10)).encode()


def make_share(root: Path, files: int = 400, seed: int = 7) -> list[Path]:
    """Create a town-hall-like tree of ``files`` typed files under ``root``.

    Deterministic for a given seed. Returns the created paths in creation order.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        dept = DEPARTMENTS[i % len(DEPARTMENTS)]
        sub = root / dept / f"{2020 + (i // len(DEPARTMENTS)) % 6}"
        sub.mkdir(parents=True, exist_ok=True)
        kind = KINDS[rng.randrange(len(KINDS))]
        path = sub / f"document_{i:05d}.{kind}"
        path.write_bytes(file_content(kind, rng, rng.randint(3_000, 24_000)))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------
# Pacing and safety


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _victims(root: Path) -> list[Path]:
    out = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not p.is_symlink()
        and _inside(root, p)
        and p.name != NOTE_NAME
        and not p.name.endswith((LOCKED_EXT, MEDUSA_EXT, MEDUSA_EXT + ".b64"))
        and not p.name.startswith(".tocsin")
    ]
    return out


# When set (``run --progress FILE``), one line "<unix time> <path>" is appended
# per file a workload has finished with, so a test can tell how many files were
# ruined, and when, before the process was stopped. Opened O_APPEND: forked
# workers share it safely.
_progress_fd: int | None = None


def _report_progress(path: Path) -> None:
    if _progress_fd is not None:
        os.write(_progress_fd, f"{time.time():.6f} ".encode() + os.fsencode(path) + b"\n")


def paced(items: list[Path], rate_per_s: float) -> Iterator[Path]:
    """Yield ``items`` no faster than ``rate_per_s`` (0: as fast as possible).

    Progress is reported for an item once the consumer asks for the next one,
    i.e. after it has finished with it.
    """
    start = time.monotonic()
    for i, item in enumerate(items):
        if rate_per_s > 0:
            due = start + i / rate_per_s
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield item
        _report_progress(item)


def _keystream(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _xor(data: bytes, seed: int) -> bytes:
    key = _keystream(seed, len(data))
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        len(data), "little"
    )


# --------------------------------------------------------------------------
# Attacks (each returns the number of files it ruined)


def encrypt_inplace(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Overwrite every file with its encryption, same name, same size."""
    n = 0
    for p in paced(_victims(root), rate_per_s):
        data = p.read_bytes()
        with p.open("r+b") as fh:
            fh.write(_xor(data, seed + n))
        n += 1
    return n


def encrypt_copy(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Write ``name.ext.locked`` encrypted, delete the original, leave a note per directory."""
    n = 0
    noted: set[Path] = set()
    for p in paced(_victims(root), rate_per_s):
        if p.parent not in noted:
            (p.parent / NOTE_NAME).write_text(NOTE_TEXT)
            noted.add(p.parent)
        p.with_name(p.name + LOCKED_EXT).write_bytes(_xor(p.read_bytes(), seed + n))
        p.unlink()
        n += 1
    return n


def _encrypt_to_copy(
    root: Path, rate_per_s: float, seed: int, name: Callable[[Path], Path], b64: bool = False
) -> int:
    """A ransom note in every directory first, then an encrypted copy named by ``name``
    beside each file (base64 text when ``b64``), the original deleted."""
    victims = _victims(root)
    for d in sorted({p.parent for p in victims}):
        (d / NOTE_NAME).write_text(NOTE_TEXT)
    n = 0
    for p in paced(victims, rate_per_s):
        data = _xor(p.read_bytes(), seed + n)
        name(p).write_bytes(base64.b64encode(data) if b64 else data)
        p.unlink()
        n += 1
    return n


def encrypt_medusa(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Medusa style: notes everywhere first, then ``name.ext.MEDUSA`` copies, originals deleted."""
    return _encrypt_to_copy(root, rate_per_s, seed, lambda p: p.with_name(p.name + MEDUSA_EXT))


def encrypt_copy_stem(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Notes first, then ``name.MEDUSA`` copies (the extension replaced), originals deleted."""
    return _encrypt_to_copy(root, rate_per_s, seed, lambda p: p.with_suffix(MEDUSA_EXT))


def encrypt_copy_b64(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Notes first, then ``name.ext.MEDUSA.b64`` copies in base64, originals deleted."""
    return _encrypt_to_copy(
        root, rate_per_s, seed, lambda p: p.with_name(p.name + MEDUSA_EXT + ".b64"), b64=True
    )


def encrypt_head(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Intermittent: encrypt only the first 4 KiB of each file, in place."""
    n = 0
    for p in paced(_victims(root), rate_per_s):
        with p.open("r+b") as fh:
            head = fh.read(4096)
            fh.seek(0)
            fh.write(_xor(head, seed + n))
        n += 1
    return n


def encrypt_stripes(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Intermittent: encrypt every other 16-byte block of each file, in place."""
    n = 0
    for p in paced(_victims(root), rate_per_s):
        data = bytearray(p.read_bytes())
        key = _keystream(seed + n, len(data))
        for off in range(0, len(data), 32):
            for j in range(off, min(off + 16, len(data))):
                data[j] ^= key[j]
        p.write_bytes(bytes(data))
        n += 1
    return n


def encrypt_base64(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Encrypt, then write the ciphertext as base64 text in place (defeats byte entropy)."""
    n = 0
    for p in paced(_victims(root), rate_per_s):
        p.write_bytes(base64.b64encode(_xor(p.read_bytes(), seed + n)))
        n += 1
    return n


def _worker(args: tuple[str, list[str], float, int]) -> int:
    _root, names, rate, seed = args
    n = 0
    for p in paced([Path(x) for x in names], rate):
        data = p.read_bytes()
        with p.open("r+b") as fh:
            fh.write(_xor(data, seed + n))
        n += 1
    return n


def encrypt_workers(root: Path, rate_per_s: float = 200, seed: int = 1, workers: int = 8) -> int:
    """``workers`` child processes of this one, each encrypting its share of the files."""
    victims = [str(p) for p in _victims(root)]
    parts = [victims[i::workers] for i in range(workers)]
    jobs = [
        (str(root), part, rate_per_s / workers, seed + i * 100_000) for i, part in enumerate(parts)
    ]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        return sum(pool.map(_worker, jobs))


# --------------------------------------------------------------------------
# Heavy benign jobs (each returns the number of files it wrote or removed)


def backup_targz(root: Path, rate_per_s: float = 0, seed: int = 1) -> int:
    """tar+gzip the share into ``root/Sauvegardes/`` (one big high-entropy file)."""
    out = root / "Sauvegardes"
    out.mkdir(exist_ok=True)
    victims = [p for p in _victims(root) if out not in p.parents]
    with tarfile.open(out / f"partage-{seed}.tar.gz", "w:gz") as tar:
        for p in paced(victims, rate_per_s):
            tar.add(p, arcname=str(p.relative_to(root)))
    return 1


def photo_import(root: Path, rate_per_s: float = 200, seed: int = 1, files: int = 300) -> int:
    """New JPEG files arrive in a new folder (high entropy, correct type)."""
    rng = random.Random(seed)
    dest = root / "Communication" / f"photos-{seed}"
    dest.mkdir(parents=True, exist_ok=True)
    names = [dest / f"IMG_{i:04d}.jpg" for i in range(files)]
    for p in paced(names, rate_per_s):
        p.write_bytes(_jpeg(rng, rng.randint(20_000, 60_000)))
    return files


def office_saves(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Every office document is re-saved (new zip content, same type)."""
    rng = random.Random(seed)
    docs = [p for p in _victims(root) if p.suffix in (".docx", ".xlsx", ".odt")]
    for p in paced(docs, rate_per_s):
        p.write_bytes(_zip_office(rng, rng.randint(3_000, 24_000), p.suffix[1:]))
    return len(docs)


def mass_delete(root: Path, rate_per_s: float = 0, seed: int = 1) -> int:
    """Delete every file of two departments (an archive purge)."""
    victims = [p for p in _victims(root) if p.relative_to(root).parts[0] in DEPARTMENTS[:2]]
    for p in paced(victims, rate_per_s):
        p.unlink()
    return len(victims)


def gzip_logs(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Compress every text and csv file to ``.gz`` and remove the original (log rotation)."""
    victims = [p for p in _victims(root) if p.suffix in (".txt", ".csv")]
    for p in paced(victims, rate_per_s):
        with gzip.open(p.with_name(p.name + ".gz"), "wb") as fh:
            fh.write(p.read_bytes())
        p.unlink()
    return len(victims)


def sqlite_churn(root: Path, rate_per_s: float = 200, seed: int = 1, rows: int = 2000) -> int:
    """An application database taking many small transactions."""
    db = root / "Finances" / "comptabilite.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE IF NOT EXISTS ecriture (id INTEGER PRIMARY KEY, libelle TEXT, montant REAL)"
    )
    rng = random.Random(seed)
    start = time.monotonic()
    for i in range(rows):
        con.execute(
            "INSERT INTO ecriture (libelle, montant) VALUES (?, ?)",
            (f"mandat {i}", rng.random() * 1e4),
        )
        con.commit()
        if rate_per_s > 0:
            delay = start + (i + 1) / rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    con.close()
    return rows


# --------------------------------------------------------------------------
# Evasive attacks, exfiltration staging, and the benign jobs they resemble


def encrypt_pattern(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Intermittent: encrypt 64 of every 192 bytes of each file, in place."""
    n = 0
    for p in paced(_victims(root), rate_per_s):
        data = bytearray(p.read_bytes())
        key = _keystream(seed + n, len(data))
        for off in range(0, len(data), 192):
            for j in range(off, min(off + 64, len(data))):
                data[j] ^= key[j]
        p.write_bytes(bytes(data))
        n += 1
    return n


def encrypt_hex(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Encrypt, then write the ciphertext as hex text in place (defeats byte entropy)."""
    n = 0
    for p in paced(_victims(root), rate_per_s):
        p.write_bytes(_xor(p.read_bytes(), seed + n).hex().encode())
        n += 1
    return n


ARCHIVE_NAME = "export.zip"


def exfil_stage(root: Path, rate_per_s: float = 0, seed: int = 1, port: int = 0) -> int:
    """Read every file of the share, pack them into one zip on the share, send it out.

    "Out" is 127.0.0.1:``port`` when given (a listener the caller owns), else a
    throwaway loopback listener of this process: bytes leave through the network
    stack and never leave the machine.
    """
    import socket

    out = root / "Temp"
    out.mkdir(exist_ok=True)
    archive = out / ARCHIVE_NAME
    n = 0
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for p in paced([p for p in _victims(root) if out not in p.parents], rate_per_s):
            z.writestr(str(p.relative_to(root)), p.read_bytes())
            n += 1
    srv = None
    if not port:
        srv = socket.create_server(("127.0.0.1", 0))
        port = srv.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as c:
        conn = srv.accept()[0] if srv else None
        data = archive.read_bytes()
        sent = 0
        while sent < len(data):
            sent += c.send(data[sent : sent + 65536])
            if conn is not None:
                conn.recv(1 << 20)
        if conn is not None:
            conn.close()
    if srv is not None:
        srv.close()
    return n


def sed_inplace(root: Path, rate_per_s: float = 0, seed: int = 1) -> int:
    """``sed -i`` over every text and csv file (temp file renamed over the original)."""
    import subprocess

    victims = [str(p) for p in _victims(root) if p.suffix in (".txt", ".csv")]
    for i in range(0, len(victims), 50):
        subprocess.run(["sed", "-i", "s/conseil/Conseil/g", *victims[i : i + 50]], check=True)
    return len(victims)


def convert_images(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Convert every PNG to JPEG and every JPEG to PNG beside it, removing the source
    (same stem, a new but typed file: what an image batch converter does)."""
    rng = random.Random(seed)
    victims = [p for p in _victims(root) if p.suffix in (".png", ".jpg")]
    for p in paced(victims, rate_per_s):
        size = max(p.stat().st_size // 2, 1000)
        if p.suffix == ".png":
            p.with_suffix(".jpg").write_bytes(_jpeg(rng, size))
        else:
            p.with_suffix(".png").write_bytes(_png(rng, size))
        p.unlink()
    return len(victims)


def zip_folders(root: Path, rate_per_s: float = 0, seed: int = 1) -> int:
    """Compress each year folder into ``YEAR.zip`` beside it and remove the folder's files."""
    n = 0
    years = sorted({p.parent for p in _victims(root) if p.parent.name.isdigit()})
    for d in paced(years, rate_per_s):
        files = [p for p in d.iterdir() if p.is_file()]
        with zipfile.ZipFile(d.with_name(d.name + ".zip"), "w", zipfile.ZIP_DEFLATED) as z:
            for p in files:
                z.write(p, arcname=p.name)
        for p in files:
            p.unlink()
        n += len(files)
    return n


def backup_gpg_files(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Encrypted copies ``Sauvegardes/chiffrees/<tree>/<name>.gpg`` plus one manifest per
    folder; deletes and modifies nothing."""
    dest = root / "Sauvegardes" / "chiffrees"
    victims = [p for p in _victims(root) if (root / "Sauvegardes") not in p.parents]
    n = 0
    manifested: set[Path] = set()
    for p in paced(victims, rate_per_s):
        out = dest / p.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.parent not in manifested:
            (out.parent / "MANIFEST.txt").write_text("sauvegarde chiffree du partage\n")
            manifested.add(out.parent)
        out.with_name(out.name + ".gpg").write_bytes(_xor(p.read_bytes(), seed + n))
        n += 1
    return n


ATTACKS: dict[str, Callable[..., int]] = {
    "encrypt-inplace": encrypt_inplace,
    "encrypt-copy": encrypt_copy,
    "encrypt-head": encrypt_head,
    "encrypt-stripes": encrypt_stripes,
    "encrypt-base64": encrypt_base64,
    "encrypt-workers": encrypt_workers,
    "encrypt-pattern": encrypt_pattern,
    "encrypt-hex": encrypt_hex,
}
BENIGN: dict[str, Callable[..., int]] = {
    "backup-targz": backup_targz,
    "photo-import": photo_import,
    "office-saves": office_saves,
    "mass-delete": mass_delete,
    "gzip-logs": gzip_logs,
    "sqlite-churn": sqlite_churn,
    "sed-inplace": sed_inplace,
    "convert-images": convert_images,
    "zip-folders": zip_folders,
    "backup-gpg-files": backup_gpg_files,
}
# Warning-level: data theft before encryption (no file is ruined).
STAGING: dict[str, Callable[..., int]] = {
    "exfil-stage": exfil_stage,
}
WORKLOADS: dict[str, Callable[..., int]] = {**ATTACKS, **BENIGN, **STAGING}


# --------------------------------------------------------------------------
# More workloads for the evaluation suite (appended; the tables below list them)

SLOW_RATE_PER_S = 2.0
BURST_FILES = 20


def encrypt_slow(root: Path, rate_per_s: float = SLOW_RATE_PER_S, seed: int = 1) -> int:
    """A paced attack: in-place encryption at ``SLOW_RATE_PER_S`` files a second or less."""
    rate = SLOW_RATE_PER_S if rate_per_s <= 0 else min(rate_per_s, SLOW_RATE_PER_S)
    return encrypt_inplace(root, rate, seed)


def encrypt_burst(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """A short burst: ``BURST_FILES`` files encrypted in place, then the process exits."""
    n = 0
    for p in paced(_victims(root)[:BURST_FILES], rate_per_s):
        data = p.read_bytes()
        with p.open("r+b") as fh:
            fh.write(_xor(data, seed + n))
        n += 1
    return n


def backup_encrypted(root: Path, rate_per_s: float = 0, seed: int = 1) -> int:
    """tar the share, then encrypt the archive into a new ``.tar.gz.enc`` (gpg/openssl-like).

    Nothing is deleted: the archive is built in memory and only the encrypted
    file is written, in ``root/Sauvegardes/``.
    """
    out = root / "Sauvegardes"
    out.mkdir(exist_ok=True)
    victims = [p for p in _victims(root) if out not in p.parents]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in paced(victims, rate_per_s):
            tar.add(p, arcname=str(p.relative_to(root)))
    (out / f"partage-{seed}.tar.gz.enc").write_bytes(b"Salted__" + _xor(buf.getvalue(), seed))
    return 1


def source_checkout(root: Path, rate_per_s: float = 200, seed: int = 1, files: int = 400) -> int:
    """A checkout: small text files in many new directories, each package directory with
    its ``__init__.py``, every file written under a temporary name and renamed into place
    (as checkouts and installers do, so no reader sees half a file), zlib objects beside."""
    rng = random.Random(seed)
    repo = root / "Informatique" / f"depot-{seed}"
    objects = repo / ".git" / "objects"
    names = [
        repo / f"module_{i // 8:03d}" / f"sous_{i % 4}" / f"fichier_{i:04d}.py"
        for i in range(files)
    ]

    def put(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{rng_suffix(seed, rng.randrange(1 << 30))}")
        tmp.write_bytes(data)
        tmp.rename(path)

    for i, p in enumerate(paced(names, rate_per_s)):
        text = f"# {_words(rng, 6)}\ndef f_{i}():\n    return {rng.randint(0, 999)}\n"
        if not p.parent.exists():
            p.parent.mkdir(parents=True)
            put(p.parent / "__init__.py", f'"""{_words(rng, 4)}"""\n'.encode())
        put(p, text.encode())
        blob = zlib.compress(f"blob {len(text)}\0{text}".encode())
        digest = f"{rng.getrandbits(160):040x}"
        obj = objects / digest[:2] / digest[2:]
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(blob)
    return files


def rsync_mirror(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """Copy the share into a new mirror directory: temp name first, renamed into place."""
    mirror = root / f"Miroir-{seed}"
    victims = [p for p in _victims(root) if mirror not in p.parents]
    n = 0
    for p in paced(victims, rate_per_s):
        dest = mirror / p.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{rng_suffix(seed, n)}")
        tmp.write_bytes(p.read_bytes())
        tmp.rename(dest)
        n += 1
    return n


def rng_suffix(seed: int, n: int) -> str:
    """rsync-like temporary suffix (6 letters), deterministic."""
    rng = random.Random(seed * 1_000_003 + n)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(rng.choice(letters) for _ in range(6))


ATTACKS.update(
    {
        "encrypt-slow": encrypt_slow,
        "encrypt-burst": encrypt_burst,
        "encrypt-medusa": encrypt_medusa,
        "encrypt-copy-stem": encrypt_copy_stem,
        "encrypt-copy-b64": encrypt_copy_b64,
    }
)
BENIGN.update(
    {
        "backup-encrypted": backup_encrypted,
        "source-checkout": source_checkout,
        "rsync-mirror": rsync_mirror,
    }
)
WORKLOADS.update({**ATTACKS, **BENIGN})


# Evasions of the response: encrypt-inplace's encryption under a disguise.


def encrypt_as_sshd(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """In-place encryption by a process that calls itself ``sshd`` (prctl PR_SET_NAME)."""
    _linux.set_process_name("sshd")
    return encrypt_inplace(root, rate_per_s, seed)


def encrypt_drill_marker(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """In-place encryption by a process that names the drill marker in its arguments.

    Run with ``--tag tocsin-drill`` but without the agent's drill key: a forged drill.
    """
    return encrypt_inplace(root, rate_per_s, seed)


# Evasions of the evidence: something planted in the share first, meant to blind or
# hang the agent, then the plain in-place attack. The pause lets the agent meet the
# plant on its own.
EVASION_PAUSE_S = 1.0
NON_UTF8_NAME = b"notes-\xff.txt"


def evade_non_utf8_name(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """A file whose name is not valid UTF-8 (``notes-\\xff.txt``), then in-place encryption.

    Run as ``simulate run``, the process first becomes (exec, same pid) itself with
    that name added to its command line, as ``encrypt notes-\\xff.txt`` would show
    it: the name reaches the agent both as a file and as a writer's command line.
    """
    note = os.fsdecode(NON_UTF8_NAME)
    if note not in sys.argv:
        argv = [sys.executable, "-m", "tocsin.agent.simulate", *sys.argv[1:], "--note", note]
        os.execv(sys.executable, argv)
    with open(os.fsencode(root) + b"/" + NON_UTF8_NAME, "wb") as fh:
        fh.write(_words(random.Random(seed), 40).encode() + b"\n")
    time.sleep(EVASION_PAUSE_S)
    return encrypt_inplace(root, rate_per_s, seed)


def evade_fifo_document(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """A named pipe renamed into place as ``budget.docx``, then in-place encryption."""
    tmp = root / ".~budget.docx.tmp"
    os.mkfifo(tmp)
    os.rename(tmp, root / "budget.docx")
    time.sleep(EVASION_PAUSE_S)
    return encrypt_inplace(root, rate_per_s, seed)


# One short process per file, as ``find DIR -exec ... {} \;`` runs them: a shell that
# pipes random bytes over the file. The writer (dd) and its shell have exited before
# anyone reads their events; what lives on is this process, the launcher.
_PER_FILE = 'head -c "$1" /dev/urandom | dd of="$2" conv=notrunc status=none'


def encrypt_per_file(root: Path, rate_per_s: float = 200, seed: int = 1) -> int:
    """In place, one ``sh -c 'head | dd'`` per file (random bytes over each file)."""
    n = 0
    for p in paced(_victims(root), rate_per_s):
        subprocess.run(["sh", "-c", _PER_FILE, "sh", str(p.stat().st_size), str(p)], check=False)
        n += 1
    return n


EVASIONS: dict[str, Callable[..., int]] = {
    "encrypt-per-file": encrypt_per_file,
    "encrypt-as-sshd": encrypt_as_sshd,
    "encrypt-drill-marker": encrypt_drill_marker,
    "evade-non-utf8-name": evade_non_utf8_name,
    "evade-fifo-document": evade_fifo_document,
}
ATTACKS.update(EVASIONS)
WORKLOADS.update(EVASIONS)


def run_argv(
    style: str, share: Path, rate: float, progress: Path | None = None, tag: str = ""
) -> list[str]:
    """The command line that runs workload ``style`` on ``share`` as a process of its own
    (``python -m tocsin.agent.simulate run ...``), for the tools that launch workloads."""
    argv = [sys.executable, "-m", "tocsin.agent.simulate", "run", style, str(share)]
    argv += ["--rate", str(rate)]
    if progress is not None:
        argv += ["--progress", str(progress)]
    return argv + (["--tag", tag] if tag else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tocsin.agent.simulate")
    sub = parser.add_subparsers(dest="cmd", required=True)
    share = sub.add_parser("share", help="create a scratch share")
    share.add_argument("dir", type=Path)
    share.add_argument("--files", type=int, default=400)
    share.add_argument("--seed", type=int, default=7)
    run = sub.add_parser("run", help="run one workload on a share")
    run.add_argument("style", choices=sorted(WORKLOADS))
    run.add_argument("dir", type=Path)
    run.add_argument("--rate", type=float, default=200.0, help="files per second (0: unpaced)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--workers", type=int, default=8)
    run.add_argument("--progress", type=Path, help="append '<time> <path>' per finished file")
    run.add_argument("--tag", default="", help="a marker in the cmdline (e.g. tocsin-drill)")
    run.add_argument("--note", default="", help="any text in the cmdline (ignored)")
    args = parser.parse_args(argv)
    if args.cmd == "share":
        make_share(args.dir, args.files, args.seed)
        return 0
    fn = WORKLOADS[args.style]
    if args.progress is not None:
        global _progress_fd
        _progress_fd = os.open(args.progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    kwargs: dict[str, object] = {"rate_per_s": args.rate, "seed": args.seed}
    if args.style == "encrypt-workers":
        kwargs["workers"] = args.workers
    n = fn(args.dir, **kwargs)
    print(f"{args.style}: {n} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
