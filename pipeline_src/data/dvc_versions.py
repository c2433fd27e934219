"""What the DAG needs to know about a dataset's raw files: the version DVC recorded for them, and the files.

Each file dataset has its own DVC file, `data-versions/<name>.dvc`, tracking its folder
(`path: ../data/raw/fashion-mnist`), so each dataset has its own version: adding CIFAR-10 or fixing one
of its files changes only CIFAR-10's. (The DVC files live there, not beside the data, because git
ignores all of `data/`, and DVC refuses a DVC file git ignores.)

prepare_data gets both: the raw files as inputs, so editing one reruns it even before `dvc add`; the
version of the DVC file that covers them as a param, so a checkout of other data reruns it whatever
the file times say (a `dvc pull` or `dvc checkout` sets them anew, or, with link caches, to the
cache's). DVC owns no stage here; the DVC files are read as plain YAML because every dvc command takes
a repository-wide lock, and parallel jobs calling dvc would fail on it.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import yaml

from pipeline_src.data.files import DataError, imagefolder_dirs, input_label, search_places

# Where DVC files are looked for: data-versions/ (one per dataset), and the top level (a data.dvc of
# all of data/ from before, or one of your own).
DVC_DIRS = ("data-versions", ".")
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
    """The version DVC recorded for the raw files of a dataset: the md5 of the DVC file tracking the
    nearest folder around them ('+'-joined if two DVC files share an imagefolder dataset); '' for a
    generated dataset, which reads no file, or files no DVC file tracks (Debian's Fashion-MNIST)."""
    if spec["source"] in GENERATED_SOURCES:
        return ""
    repo_root = Path(repo_root).absolute()
    versions = dvc_versions(repo_root)
    found = []
    for place in _read_places(spec, repo_root):
        place = place.resolve()
        covering = [tracked for tracked in versions if place == tracked or tracked in place.parents]
        if covering:
            found.append(versions[max(covering, key=lambda tracked: len(tracked.parts))])
    return "+".join(sorted(set(found)))


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
