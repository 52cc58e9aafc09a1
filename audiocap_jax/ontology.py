"""The AudioSet ontology and the original system's rule that turns label ids into keyword captions.

AudioSet clips carry label ids (MIDs such as "/m/03wvsk"), not captions. The model is trained to emit
"keywords" for them: each label's direct parents' names, then its own name, e.g. ["/m/03wvsk"] ->
"domestic sounds - home sounds, hair dryer".
"""

import dataclasses
import importlib.resources
import json
import os
from collections.abc import Mapping, Sequence

from etils import epath

PACKAGED_ONTOLOGY = "audioset_ontology.json"


@dataclasses.dataclass(frozen=True)
class Ontology:
    """AudioSet label names and one level of parents, read from an `ontology.json`."""

    names: Mapping[str, str]  # MID -> display name, e.g. "/m/03wvsk" -> "Hair dryer".
    parent_ids: Mapping[str, tuple[str, ...]]  # MID -> direct parents' MIDs in ontology file order.
    source: str  # The file the ontology came from, for error messages.

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Ontology":
        """Reads an AudioSet `ontology.json`; None reads the copy packaged in `audiocap_jax/assets`."""
        if path is None:
            resource = importlib.resources.files("audiocap_jax") / "assets" / PACKAGED_ONTOLOGY
            source, text = str(resource), resource.read_text(encoding="utf-8")
        else:  # a local path or a bucket URL (a TFDS build reads its --manual_dir through etils.epath)
            source = os.fspath(path)
            if not epath.Path(source).is_file():
                raise FileNotFoundError(
                    f"AudioSet ontology {source!r} does not exist. Pass the ontology.json that comes with "
                    "AudioSet, or path=None for the packaged copy."
                )
            text = epath.Path(source).read_bytes().decode("utf-8")
        try:
            nodes = json.loads(text)
            names = {node["id"]: node["name"] for node in nodes}
            parent_ids: dict[str, list[str]] = {mid: [] for mid in names}
            for node in nodes:
                for child_id in node["child_ids"]:
                    parent_ids[child_id].append(node["id"])
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise ValueError(
                f"{source!r} is not an AudioSet ontology: expected a JSON list of nodes with 'id', 'name' "
                f"and 'child_ids' ({type(error).__name__}: {error})."
            ) from error
        return cls(names, {mid: tuple(parents) for mid, parents in parent_ids.items()}, source)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, mid: object) -> bool:
        return mid in self.names

    def name(self, mid: str) -> str:
        """The label's display name, e.g. "Hair dryer"."""
        self._check_known(mid)
        return self.names[mid]

    def parents(self, mid: str) -> tuple[str, ...]:
        """MIDs of the label's direct parents (one level, no grandparents), in ontology file order."""
        self._check_known(mid)
        return self.parent_ids[mid]

    def keywords(self, label_ids: Sequence[str] | str) -> str:
        """The original keyword caption of a clip's labels (see docs: original_system.md §3).

        For each label in annotation order: its direct parents' names, then its own name, each name kept
        only at its first occurrence; "," and ":" become " -"; lower-cased; joined with ", ". Nothing is
        sorted or filtered.

        Args:
          label_ids: MIDs, or one string of comma-separated MIDs (spaces and double quotes are stripped).
        """
        if isinstance(label_ids, str):
            label_ids = label_ids.split(",")
        names: list[str] = []
        for mid in (label.strip().strip('"') for label in label_ids):
            for related in (*self.parents(mid), mid):
                if self.names[related] not in names:
                    names.append(self.names[related])
        return ", ".join(name.replace(",", " -").replace(":", " -").lower() for name in names)

    def _check_known(self, mid: str) -> None:
        if mid not in self.names:
            raise ValueError(
                f"Unknown AudioSet label id {mid!r}: not among the {len(self.names)} labels of ontology "
                f"{self.source!r}. Check the annotation's labels, or load the ontology.json matching them."
            )
