"""The README lists what the code holds: every departure in the deviations registry."""
import yaml

from pipeline_src.config import REPO_ROOT


def test_readme_lists_every_deviation_of_the_registry():
    registry = yaml.safe_load((REPO_ROOT / "params" / "deviations.yaml").read_text())
    readme = (REPO_ROOT / "README.md").read_text()
    ids = [entry["id"] for entry in registry["deviations"]]
    assert ids and len(ids) == len(set(ids))
    missing = [i for i in ids if f"`{i}`" not in readme]
    assert not missing, f"README.md does not list {missing}"
