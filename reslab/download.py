"""Fetch dataset files from their official sources and check them against the official md5."""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .errors import DataError

# Extra mirror tried before the official ones (tests point it at a local HTTP server).
MIRROR_ENV = "RESLAB_MIRROR"


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """Return the hex md5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch(filename: str, urls: list[str], md5: str, dest: Path) -> Path:
    """Download `filename` from the first url that answers into `dest`, verify its md5, return the path."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / filename
    mirror = os.environ.get(MIRROR_ENV)
    candidates = ([mirror.rstrip("/") + "/" + filename] if mirror else []) + urls
    errors = []
    for url in candidates:
        partial = target.with_name(target.name + ".part")
        try:
            _download(url, partial)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            partial.unlink(missing_ok=True)
            # HTTPError's reason drops the status code ("Not Found"); its str keeps it ("HTTP Error 404: ...").
            reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
            errors.append(f"{url}: {reason}")
            continue
        got = md5sum(partial)
        if got != md5:
            partial.unlink(missing_ok=True)
            raise DataError(f"download of {filename} from {url} has md5 {got}, expected {md5}; the file was removed")
        os.replace(partial, target)
        return target
    raise DataError(f"could not download {filename} ({'; '.join(errors)}); place the file at {target}")


def _download(url: str, path: Path) -> None:
    """Stream one url to a file with a progress bar."""
    with urllib.request.urlopen(url, timeout=30) as response, open(path, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=path.name.removesuffix(".part"),
                  disable=None, leave=False) as bar:
            while block := response.read(1 << 16):
                out.write(block)
                bar.update(len(block))


def extract_tar(archive: Path, dest: Path) -> None:
    """Unpack a .tar.gz into dest, refusing members that would land outside it."""
    with tarfile.open(archive, "r:gz") as tar:
        root = dest.resolve()
        for member in tar.getmembers():
            if not (member.isfile() or member.isdir()):
                raise DataError(f"{archive}: unexpected member {member.name!r} (only files and folders allowed)")
            if not (root / member.name).resolve().is_relative_to(root):
                raise DataError(f"{archive}: member {member.name!r} points outside {dest}")
        if hasattr(tarfile, "data_filter"):   # Python >= 3.11.4 / 3.12: also refuse odd permissions
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
