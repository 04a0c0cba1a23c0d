"""What a save_pretrained-style directory holds, for the two readers of one: a local FP model
(checks.py) and a quantized checkpoint (quantize/checkpoint/format.py). Errors are ValueErrors
naming the file; each reader adds which directory it was and raises its own kind."""

from __future__ import annotations

from pathlib import Path

from qcheck.files import read_json_object

# Weights in these formats are pickles: qcheck refuses them, never unpickles them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX = "model.safetensors.index.json"


def pickled_files(directory: Path) -> list[str]:
    """Names of the files in `directory` whose suffix says they are pickled, sorted."""
    return sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)


def indexed_shards(directory: Path) -> list[Path] | None:
    """The safetensors shards that `directory`'s INDEX names, in name order; None without an
    index. ValueError if the index is unreadable, has no weight_map or names a missing shard."""
    index = directory / INDEX
    if not index.is_file():
        return None
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{INDEX} has no weight_map; write the directory again with `save_pretrained(DIR)`")
    shards = sorted(set(weight_map.values()))
    missing = [name for name in shards if not (directory / name).is_file()]
    if missing:
        raise ValueError(f"{INDEX} lists shard(s) that are missing: {', '.join(missing)}; copy the whole "
                         f"directory again")
    return [directory / name for name in shards]
