"""Download Labeled Faces in the Wild (LFW) with ``pooch`` when no local copy exists.

LFW: G. B. Huang, M. Ramesh, T. Berg and E. Learned-Miller, "Labeled Faces in the Wild: A Database
for Studying Face Recognition in Unconstrained Environments", University of Massachusetts, Amherst,
Technical Report 07-49, 2007. http://vis-www.cs.umass.edu/lfw/

The URLs (figshare mirrors of the UMass files) and SHA-256 sums below are the ones scikit-learn's
LFW loader (``sklearn/datasets/_lfw.py``) uses. That list has no ``people.txt``; the data loader
derives identity folds from ``pairs.txt`` instead.

``fetch_lfw`` downloads the archive of one variant plus the three pair lists, lets pooch verify the
SHA-256 sums (pooch writes to a temporary file and renames it only when the hash matches), extracts
the archive into a hidden temporary folder beside the final one, copies the pair lists next to the
identity folders, writes a ``.complete`` marker and only then renames the folder into place. A folder
under its final name is therefore always complete; a later call returns it without network access.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pooch
import requests

from maskstudy.core.storage import write_json

logger = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
DOWNLOAD_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: the name it is saved under, where it lives, its SHA-256 sum."""

    filename: str
    url: str
    sha256: str

    def resolve_url(self, base_url: str | None = None) -> str:
        """The URL to fetch: ``url`` itself, or ``base_url`` + the last path component of ``url``."""
        if base_url is None:
            return self.url
        return base_url.rstrip("/") + "/" + self.url.rstrip("/").rsplit("/", 1)[-1]


def _registry(*files: RemoteFile) -> dict[str, RemoteFile]:
    return {remote.filename: remote for remote in files}


# URLs and checksums as listed by scikit-learn's LFW loader (originals at vis-www.cs.umass.edu/lfw/).
LFW_FILES: dict[str, RemoteFile] = _registry(
    RemoteFile(
        "lfw.tgz",
        "https://ndownloader.figshare.com/files/5976018",
        "055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0",
    ),
    RemoteFile(
        "lfw-funneled.tgz",
        "https://ndownloader.figshare.com/files/5976015",
        "b47c8422c8cded889dc5a13418c4bc2abbda121092b3533a83306f90d900100a",
    ),
    RemoteFile(
        "pairsDevTrain.txt",
        "https://ndownloader.figshare.com/files/5976012",
        "1d454dada7dfeca0e7eab6f65dc4e97a6312d44cf142207be28d688be92aabfa",
    ),
    RemoteFile(
        "pairsDevTest.txt",
        "https://ndownloader.figshare.com/files/5976009",
        "7cb06600ea8b2814ac26e946201cdb304296262aad67d046a16a7ec85d0ff87c",
    ),
    RemoteFile(
        "pairs.txt",
        "https://ndownloader.figshare.com/files/5976006",
        "ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
    ),
)

PAIRS_FILES: tuple[str, ...] = ("pairsDevTrain.txt", "pairsDevTest.txt", "pairs.txt")


@dataclass(frozen=True)
class LfwVariant:
    """An LFW image variant: its archive in the registry and the folder it is extracted to."""

    archive: str
    folder: str


LFW_VARIANTS: dict[str, LfwVariant] = {
    "original": LfwVariant(archive="lfw.tgz", folder="lfw"),
    "funneled": LfwVariant(archive="lfw-funneled.tgz", folder="lfw_funneled"),
}


class DownloadError(RuntimeError):
    """A download failed (HTTP error, network failure, checksum mismatch or unreadable archive)."""


def fetch_lfw(
    dest: str | os.PathLike,
    variant: str = "funneled",
    base_url: str | None = None,
    progress: bool = True,
    files: Mapping[str, RemoteFile] | None = None,
    keep_archive: bool = False,
) -> Path:
    """Download and extract LFW into ``dest``; return the folder holding the identity folders.

    The returned folder looks like ``<root>/<Name>/<Name>_0001.jpg`` plus ``<root>/pairs.txt``,
    ``pairsDevTrain.txt`` and ``pairsDevTest.txt``. If it already exists with its ``.complete``
    marker, it is returned at once, without network access.

    Args:
        dest: folder for the downloads and the extracted images (``<dest>/lfw_funneled`` etc.).
        variant: ``"funneled"`` or ``"original"``.
        base_url: if given, every file is fetched from ``base_url/<last path component of its URL>``
            (a mirror or a local test server).
        progress: show pooch's progress bar (tqdm).
        files: registry to use instead of :data:`LFW_FILES` (filename -> :class:`RemoteFile`).
        keep_archive: keep the downloaded ``.tgz`` after a successful extraction.

    Raises:
        ValueError: unknown variant, or a registry that lacks a needed file.
        DownloadError: HTTP error, network failure, checksum mismatch or unreadable archive.
    """
    if variant not in LFW_VARIANTS:
        known = ", ".join(repr(name) for name in sorted(LFW_VARIANTS))
        raise ValueError(f"unknown LFW variant {variant!r}; known variants: {known}")
    spec = LFW_VARIANTS[variant]
    dest = Path(dest)
    final = dest / spec.folder
    if is_complete(final):
        return final

    registry = LFW_FILES if files is None else files
    needed = (spec.archive, *PAIRS_FILES)
    missing = [name for name in needed if name not in registry]
    if missing:
        raise ValueError(f"the file registry lacks {', '.join(missing)}")
    remotes = [registry[name] for name in needed]
    manual = _manual_instructions(remotes, base_url)

    dest.mkdir(parents=True, exist_ok=True)
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=DOWNLOAD_TIMEOUT_S)
    local: dict[str, Path] = {}
    for remote in remotes:
        local[remote.filename] = download_verified(remote, dest, base_url, downloader, manual)

    archive_path = local[spec.archive]
    _extract_atomically(
        archive_path,
        final,
        extra_files=[local[name] for name in PAIRS_FILES],
        marker={"variant": variant, "archive": spec.archive, "sha256": registry[spec.archive].sha256},
        manual=manual,
    )
    if not keep_archive:
        with contextlib.suppress(FileNotFoundError):
            archive_path.unlink()
    return final


def is_complete(folder: str | os.PathLike) -> bool:
    """True when ``folder`` was fully extracted by :func:`fetch_lfw` (its marker exists)."""
    return (Path(folder) / COMPLETE_MARKER).is_file()


def _manual_instructions(remotes: list[RemoteFile], base_url: str | None) -> str:
    archive, *pairs = remotes
    pairs_text = ", ".join(f"{p.filename} from {p.resolve_url(base_url)}" for p in pairs)
    return (
        f"To place the files by hand: download {archive.filename} from "
        f"{archive.resolve_url(base_url)}, extract it, put {pairs_text} next to the identity "
        "folders (so the folder holds <Name>/<Name>_0001.jpg and pairs.txt), and point "
        "MASKSTUDY_LFW (or the lfw_root parameter) at the folder holding the identity folders "
        "and pairs.txt. The originals are also at http://vis-www.cs.umass.edu/lfw/."
    )


def download_verified(
    remote: RemoteFile,
    dest: Path,
    base_url: str | None,
    downloader: pooch.HTTPDownloader,
    manual: str,
) -> Path:
    """Fetch one file with pooch (SHA-256 checked, temp file + rename); wrap failures."""
    url = remote.resolve_url(base_url)
    try:
        path = pooch.retrieve(
            url,
            known_hash=f"sha256:{remote.sha256}",
            fname=remote.filename,
            path=dest,
            downloader=downloader,
        )
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        reason = exc.response.reason if exc.response is not None else str(exc)
        raise DownloadError(
            f"Could not download {remote.filename} from {url}: HTTP {status} {reason}.\n{manual}"
        ) from exc
    except requests.RequestException as exc:
        raise DownloadError(
            f"Could not download {remote.filename} from {url}: network failure ({exc}).\n{manual}"
        ) from exc
    except ValueError as exc:
        got = re.search(r"but got ([0-9a-fA-F]+)", str(exc))
        if got is None:
            raise DownloadError(
                f"Could not download {remote.filename} from {url}: {exc}\n{manual}"
            ) from exc
        raise DownloadError(
            f"Checksum mismatch for {remote.filename} downloaded from {url}: expected SHA-256 "
            f"{remote.sha256} but got {got.group(1)}; the download was deleted.\n{manual}"
        ) from exc
    except OSError as exc:
        raise DownloadError(
            f"Could not download {remote.filename} from {url}: {exc}.\n{manual}"
        ) from exc
    return Path(path)


def _extract_atomically(
    archive_path: Path,
    final: Path,
    extra_files: list[Path],
    marker: dict,
    manual: str,
) -> None:
    """Extract into a hidden temp folder beside ``final``, add files and marker, then rename."""
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        try:
            with tarfile.open(archive_path, "r:*") as archive:
                _safe_extractall(archive, staging)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DownloadError(f"Could not extract {archive_path.name}: {exc}.\n{manual}") from exc
        root = _archive_root(staging)
        if not any(child.is_dir() for child in root.iterdir()):
            raise DownloadError(f"{archive_path.name} holds no identity folders.\n{manual}")
        for extra in extra_files:
            shutil.copyfile(extra, root / extra.name)
        write_json(root / COMPLETE_MARKER, marker)
        _move_into_place(root, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _archive_root(staging: Path) -> Path:
    """The archive's single top-level folder (``lfw_funneled/``), else the staging folder itself."""
    children = list(staging.iterdir())
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return staging


def _safe_extractall(archive: tarfile.TarFile, target: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        archive.extractall(target, filter="data")
        return
    # Python without extraction filters: refuse absolute paths, "..", links and devices.
    for member in archive.getmembers():
        parts = Path(member.name).parts
        if Path(member.name).is_absolute() or ".." in parts:
            raise tarfile.TarError(f"unsafe path in archive: {member.name!r}")
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"unsupported member type in archive: {member.name!r}")
    archive.extractall(target)


def _move_into_place(root: Path, final: Path) -> None:
    """Rename the finished folder onto ``final``; an unmarked leftover there is replaced."""
    if final.exists() and not is_complete(final):
        logger.warning("replacing incomplete folder %s", final)
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale-", dir=final.parent))
        os.replace(final, trash / final.name)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(root, final)
    except OSError:
        if is_complete(final):  # another process finished first; keep its copy
            return
        raise
