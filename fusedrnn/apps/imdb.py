"""The IMDB Large Movie Review Dataset (Maas et al., 2011) in its official ``aclImdb`` layout.

Reads ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` from the ``.tar.gz`` archive
(streamed, never unpacked) or from an unpacked folder (``aclImdb`` itself or the folder
holding it). Needs nothing else: ``train/unsup``, ``*.feat`` and the URL lists may be absent.

Where the data is found (:func:`locate`): the ``--data`` argument, else the environment
variable ``FUSEDRNN_DATA``, else ``../shared/data/aclImdb_v1_labeled.tar.gz`` (relative to the
working directory or to the project root) if it exists, else the official archive downloaded
once into ``~/.cache/fusedrnn``; offline, a :class:`DataNotFoundError` says where to put it.
"""

import os
import random
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Reviews", "DataNotFoundError", "locate", "load", "split_validation", "OFFICIAL_URL",
           "ENV_VAR", "LABELS"]

OFFICIAL_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
ENV_VAR = "FUSEDRNN_DATA"
SHARED_ARCHIVE = Path("..") / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fusedrnn"
LABELS = ("negative", "positive")
SPLITS = ("train", "test")
try:  # tarfile reads .tar.xz too; lzma is optional in some Python builds
    from lzma import LZMAError
    _LZMA_ERRORS = (LZMAError,)
except ImportError:
    _LZMA_ERRORS = ()
_REVIEW = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


class DataNotFoundError(FileNotFoundError):
    """The IMDB data is missing, unreadable or not in the aclImdb layout."""


@dataclass
class Reviews:
    """Parallel lists of one split: ``texts``, ``labels`` (1 positive, 0 negative) and the
    file ``ids`` (``"pos/123_9"``), sorted by label then numeric id."""

    texts: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    ids: list = field(default_factory=list)

    def __len__(self):
        return len(self.texts)

    def subset(self, indices):
        """A :class:`Reviews` of the rows at ``indices``, in that order."""
        return Reviews([self.texts[i] for i in indices], [self.labels[i] for i in indices],
                       [self.ids[i] for i in indices])


def locate(data=None, download=True):
    """The path of the IMDB archive or folder to read (see the module docstring)."""
    source = "--data"
    if data is None:
        data, source = os.environ.get(ENV_VAR) or None, ENV_VAR
    if data is not None:
        path = Path(data).expanduser()
        if not path.exists():
            raise DataNotFoundError(f"IMDB data not found at {path} (given by {source})")
        return path
    for candidate in (Path.cwd() / SHARED_ARCHIVE, PROJECT_ROOT / SHARED_ARCHIVE,
                      CACHE_DIR / "aclImdb_v1.tar.gz"):
        if candidate.exists():
            return candidate
    if not download:
        raise DataNotFoundError(_missing_message("downloading is disabled"))
    return _download(CACHE_DIR / "aclImdb_v1.tar.gz")


def _missing_message(reason):
    return (f"IMDB data not found and {reason}. Put the official archive aclImdb_v1.tar.gz "
            f"(from {OFFICIAL_URL}) or an unpacked aclImdb folder somewhere and pass "
            f"--data PATH or set {ENV_VAR}=PATH, or place it at {PROJECT_ROOT / SHARED_ARCHIVE} "
            f"or {CACHE_DIR / 'aclImdb_v1.tar.gz'}")


def _download(target, url=None):
    url = url or OFFICIAL_URL
    partial = target.with_name(target.name + ".part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise DataNotFoundError(_missing_message(f"downloading {url} failed ({error})")) from error
    partial.replace(target)
    return target


def load(data=None, splits=SPLITS):
    """``{split: Reviews}`` for the requested splits, read from :func:`locate` ``(data)``."""
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; choose among {SPLITS}")
    path = locate(data)
    rows = {split: [] for split in splits}
    if path.is_dir():
        _read_folder(path, rows)
    else:
        _read_archive(path, rows)
    result = {}
    for split, found in rows.items():
        if not found:
            raise DataNotFoundError(f"no {split} reviews in {path}: expected the aclImdb layout "
                                    f"aclImdb/{split}/pos/<id>_<rating>.txt and .../neg/...")
        found.sort(key=lambda row: (row[0], row[1]))
        result[split] = Reviews([row[2] for row in found], [row[0] for row in found],
                                [f"{LABELS[row[0]][:3]}/{row[1]}_{row[3]}" for row in found])
    return result


def _add(rows, match, read):
    split, polarity, review_id, rating = match.groups()
    if split in rows:
        text = read().decode("utf-8", errors="replace")
        rows[split].append((int(polarity == "pos"), int(review_id), text, int(rating)))


def _read_archive(path, rows):
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                match = _REVIEW.search(member.name)
                if match and member.isfile():
                    _add(rows, match, archive.extractfile(member).read)
            # tarfile ends the archive at the first header it cannot read, so a damaged
            # archive would give part of its reviews; reading the compressed stream to its
            # end checks its CRC and length instead.
            while archive.fileobj.read(1 << 20):
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error, *_LZMA_ERRORS) as error:
        raise DataNotFoundError(f"cannot read the IMDB archive {path}: {error}") from error


def _read_folder(path, rows):
    root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    for file in sorted(root.glob("*/*/*.txt")):
        match = _REVIEW.search(file.relative_to(root).as_posix())
        if match:
            _add(rows, match, file.read_bytes)


def split_validation(reviews, fraction=0.1, seed=0):
    """``(train, validation)``: a seeded random ``fraction`` of ``reviews`` held out, the same
    share of each label (so both parts stay balanced)."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = random.Random(seed)
    train, validation = [], []
    for label in sorted(set(reviews.labels)):
        indices = [i for i, value in enumerate(reviews.labels) if value == label]
        rng.shuffle(indices)
        cut = max(1, round(len(indices) * fraction))
        validation += indices[:cut]
        train += indices[cut:]
    return reviews.subset(sorted(train)), reviews.subset(sorted(validation))
