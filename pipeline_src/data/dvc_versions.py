"""What the DAG needs to know about a dataset's raw files: the version DVC recorded for them, and the files.

One DVC file at the top, `data.dvc`, tracks `data/raw/` as one folder (`path: data/raw`); its md5 is that of
the folder's manifest, DVC's list of every file's relative path and md5, kept in the DVC cache. Each
dataset's version is derived from its own part of that manifest: the md5 DVC gives a folder tracked by
itself (`<md5>.dir`), computed from the manifest's entries under `data/raw/<name>/`. So adding CIFAR-10 or
fixing one of its files changes data.dvc and CIFAR-10's version, and leaves Fashion-MNIST's as it was
(Fashion-MNIST's is `ec0372c1...dir` whether data.dvc tracks it alone or with others). Where the cache lacks
the manifest (a fresh clone before `make data` or `dvc pull`), every dataset under data/raw/ takes data.dvc's
own md5 instead: coarser, never wrong. Other DVC files, at the top or in `data-versions/` (a dataset kept
elsewhere in the repository), are read the same way.

prepare_data gets both: the raw files as inputs, so editing one reruns it even before `dvc add`; the
version of the DVC file that covers them as a param, so a checkout of other data reruns it whatever
the file times say (a `dvc pull` or `dvc checkout` sets them anew, or, with link caches, to the
cache's). DVC owns no stage here; the DVC files are read as plain YAML because every dvc command takes
a repository-wide lock, and parallel jobs calling dvc would fail on it.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
from pathlib import Path

import yaml

from pipeline_src.data.files import DataError, imagefolder_dirs, input_label, search_places

# Where DVC files are looked for: the top level (data.dvc, of all of data/raw/), and data-versions/ (one of
# your own for a dataset kept outside data/raw/; one inside would overlap data.dvc, which DVC refuses).
DVC_DIRS = (".", "data-versions")
# Sources made in code (sklearn's bundled digits, synthetic clutter): they read nothing under data/.
GENERATED_SOURCES = {"digits", "synthetic-clutter"}
# Above this many files a folder is passed as itself: Snakemake would stat every file at each DAG build
# (ImageNet is 1.3M); its DVC file's hash still catches its changes once they are `dvc add`ed.
MAX_LISTED_FILES = 10_000


def read_dvc_file(path: Path) -> tuple[Path, str]:
    """(the folder or file a DVC file tracks, absolute; the md5 it records, '<md5>.dir' for a folder)."""
    try:
        stage = yaml.safe_load(path.read_text()) or {}
        outs = stage.get("outs") or []
    except (yaml.YAMLError, AttributeError) as err:
        raise DataError(f"{path}: not a DVC file ({err})") from None
    if len(outs) != 1 or not outs[0].get("md5") or not outs[0].get("path"):
        raise DataError(f"{path}: expected one output with a path and an md5 (run `dvc add` on it), found {outs!r}")
    base = path.parent / stage.get("wdir", ".")
    return (base / outs[0]["path"]).resolve(), outs[0]["md5"]


def dvc_versions(repo_root: str | Path) -> dict[Path, str]:
    """Tracked path -> md5, of every DVC file in DVC_DIRS."""
    repo_root = Path(repo_root)
    files = sorted(f for folder in DVC_DIRS for f in (repo_root / folder).glob("*.dvc") if f.is_file())
    return dict(read_dvc_file(f) for f in files)


def _read_places(spec: dict, repo_root: Path) -> dict[Path, list[Path]]:
    """Where prepare reads a file dataset, with the files there: both folders for imagefolder; else the
    first place the source's reader finds anything in, or, with nothing found yet, the dataset's own
    place (its path, else data/raw/<source>), whose DVC file may be checked out later."""
    if spec["source"] == "imagefolder":
        return {place: _listing(place) for place in imagefolder_dirs(spec, repo_root).values()}
    places = search_places(spec, repo_root)
    return next(({place: files} for place, files in zip(places, map(_listing, places)) if files), {places[0]: []})


def dataset_dvc_hash(spec: dict, repo_root: str | Path) -> str:
    """The version DVC recorded for the raw files of a dataset: derived from the manifest of the folder
    tracked around them (data.dvc's data/raw/), as the md5 DVC gives the dataset's own folder ('+'-joined for
    an imagefolder dataset whose two folders differ); '' for a generated dataset, which reads no file, or
    files no DVC file records (Debian's Fashion-MNIST, a folder added but not yet `dvc add`ed)."""
    if spec["source"] in GENERATED_SOURCES:
        return ""
    repo_root = Path(repo_root).absolute()
    versions = dvc_versions(repo_root)
    found = []
    for place in _read_places(spec, repo_root):
        place = place.resolve()
        covering = [tracked for tracked in versions if place == tracked or tracked in place.parents]
        if covering:
            tracked = max(covering, key=lambda tracked: len(tracked.parts))
            found.append(_version_inside(repo_root, versions[tracked], place.relative_to(tracked).as_posix()))
    return "+".join(sorted(set(filter(None, found))))


def _version_inside(repo_root: Path, md5: str, rel: str) -> str:
    """The version of rel (a folder or file inside a tracked folder whose md5 is md5) from the folder's
    manifest: a file's md5, or the md5 DVC gives the folder rel tracked by itself; '' when the manifest
    lists nothing there (files not recorded yet); md5 itself for the whole folder, or with no manifest."""
    if rel == "." or not md5.endswith(".dir"):
        return md5
    manifest = _manifest(_cache_dir(repo_root), md5)
    if manifest is None:
        return md5
    for entry in manifest:
        if entry["relpath"] == rel:
            return entry["md5"]
    inside = [{"md5": e["md5"], "relpath": e["relpath"][len(rel) + 1:]} for e in manifest
              if e["relpath"].startswith(rel + "/")]
    return dir_md5(inside) if inside else ""


def dir_md5(entries: list[dict]) -> str:
    """DVC's hash of a folder from its entries ({"md5", "relpath"} each): the md5 of the JSON list sorted by
    relpath, as dvc_data's Tree.as_bytes writes it, with '.dir' appended."""
    listed = sorted(entries, key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(listed, sort_keys=True).encode()).hexdigest() + ".dir"


@functools.lru_cache(maxsize=32)  # content-addressed: a manifest's file never changes, and ImageNet's is big
def _manifest(cache: Path, md5: str) -> tuple[dict, ...] | None:
    """A tracked folder's manifest from the DVC cache (files/md5/ab/cdef...dir; ab/cdef...dir in DVC 2's
    layout), or None when the cache lacks it or it does not parse."""
    value = md5.removesuffix(".dir")
    for path in (cache / "files" / "md5" / value[:2] / f"{value[2:]}.dir", cache / value[:2] / f"{value[2:]}.dir"):
        try:
            return tuple(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return None


def _cache_dir(repo_root: Path) -> Path:
    """.dvc/cache, or the folder `dvc cache dir` set in .dvc/config.local or .dvc/config (relative to .dvc/)."""
    from configobj import ConfigObj  # DVC's own config reader, installed with it

    for name in ("config.local", "config"):
        path = repo_root / ".dvc" / name
        if path.is_file():
            folder = ConfigObj(str(path)).get("cache", {}).get("dir")
            if folder:
                return (path.parent / folder).resolve()
    return repo_root / ".dvc" / "cache"


def raw_inputs(spec: dict, repo_root: str | Path) -> list[str]:
    """The files prepare may read for a dataset spec, repo-relative where inside the repository: those of the
    first place the source's reader finds anything in (both folders for imagefolder); [] for generated sources."""
    if spec["source"] in GENERATED_SOURCES:
        return []
    repo_root = Path(repo_root).absolute()
    found = [f for files in _read_places(spec, repo_root).values() for f in files]
    return sorted({input_label(path, repo_root) for path in found})


def _listing(place: Path) -> list[Path]:
    """A file itself; a folder's files (hidden names skipped), or the folder alone when it holds very many."""
    if place.is_file():
        return [place]
    if not place.is_dir():
        return []
    files = (p for p in place.rglob("*")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(place).parts))
    first = list(itertools.islice(files, MAX_LISTED_FILES + 1))
    return [place] if len(first) > MAX_LISTED_FILES else first
