"""What the DAG needs to know about data/: the version DVC recorded in data.dvc, and the raw files a dataset reads.

prepare_data gets both: the raw files as inputs, so editing one reruns it even before `dvc add`; data.dvc's
hash as a param, so a checkout of other data reruns it whatever the file times say (a `dvc pull` or
`dvc checkout` sets them anew, or, with link caches, to the cache's). DVC owns no stage here; data.dvc is
read as plain YAML because every dvc command takes a repository-wide lock, and parallel jobs calling dvc
would fail on it.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import yaml

from pipeline_src.readers import DataError, imagefolder_dirs, input_label, search_places

DVC_FILE = "data.dvc"
# Sources made in code (sklearn's bundled digits, synthetic clutter): they read nothing under data/.
GENERATED_SOURCES = {"digits", "synthetic-clutter"}
# Above this many files a folder is passed as itself: Snakemake would stat every file at each DAG build
# (ImageNet is 1.3M); data.dvc's hash still catches its changes once they are `dvc add`ed.
MAX_LISTED_FILES = 10_000


def dvc_hash(repo_root: str | Path, dvc_file: str = DVC_FILE) -> str:
    """The md5 data.dvc records for its output ('<md5>.dir' for a folder); '' where there is no data.dvc."""
    path = Path(repo_root) / dvc_file
    try:
        outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    except FileNotFoundError:
        return ""
    except (yaml.YAMLError, AttributeError) as err:
        raise DataError(f"{path}: not a DVC file ({err})") from None
    if len(outs) != 1 or not outs[0].get("md5"):
        raise DataError(f"{path}: expected one output with an md5, found {outs!r}")
    return outs[0]["md5"]


def dataset_dvc_hash(spec: dict, repo_root: str | Path) -> str:
    """data.dvc's hash for a dataset read from files; '' for generated ones, which data/ cannot change."""
    return "" if spec["source"] in GENERATED_SOURCES else dvc_hash(repo_root)


def raw_inputs(spec: dict, repo_root: str | Path) -> list[str]:
    """The files prepare may read for a dataset spec, repo-relative where inside the repository: those of the
    first place the source's reader finds anything in (both folders for imagefolder); [] for generated sources."""
    if spec["source"] in GENERATED_SOURCES:
        return []
    repo_root = Path(repo_root).absolute()
    if spec["source"] == "imagefolder":
        found = [f for folder in imagefolder_dirs(spec, repo_root).values() for f in _listing(folder)]
    else:
        found = next((files for files in map(_listing, search_places(spec, repo_root)) if files), [])
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
