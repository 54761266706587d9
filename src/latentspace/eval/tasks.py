"""Evaluation tasks in the CLIP_benchmark / DataComp on-disk format, and suites of them.

A task is a directory::

    <task>/classnames.txt                          one class name per line (classification)
    <task>/zeroshot_classification_templates.txt   one prompt template per line, placeholder {c}
    <task>/dataset_type.txt                        optional: "classification" (default),
                                                   "retrieval" or "multilabel"
    <task>/test/nshards.txt                        number of shards N
    <task>/test/0.tar ... <task>/test/{N-1}.tar    webdataset shards

or, for classification, an ImageFolder: ``<task>/test/<class_dir>/*.{png,jpg,jpeg,webp}`` with
no nshards.txt, where line i of classnames.txt names the i-th class folder in sorted order (so a
folder of photos sorted by hand becomes a task without packing shards).

A multilabel sample's ``cls`` holds comma-separated class indices ("0,3"); it is scored by mean
average precision over classes.

A classification task whose suite entry says ``group_by: N`` also reads each sample's ``npy``
member (a NumPy array of metadata, as DataComp's WILDS and fairness shards carry: region, year,
income bracket...) and scores accuracy within each value of column N: the worst group's accuracy
is how DataComp ranks FMoW, GeoDE (by region) and Dollar Street (top-5, by income).

Using the published format (rather than one of our own) means the same harness runs our emoji
tasks and the 38 DataComp tasks unchanged. A suite is a YAML file naming tasks that sit in
directories beside it
(or under a `data_dir` given at load time). Built-in suites (`BUILTIN_SUITES`) are loaded by name.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from latentspace.data.images import ImageDecodeError, decode_image

log = logging.getLogger(__name__)

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "retrieval"
MULTILABEL = "zeroshot_multilabel"
WINOGAVIL = "winogavil"  # DataComp's misc/winogavil, in the dataset's own release layout (eval/winogavil.py)
WINOGAVIL_CSV = "winogavil_dataset.csv"
# The metric a task is ranked by when the suite does not name one (DataComp's choices).
DEFAULT_MAIN_METRIC = {
    CLASSIFICATION: "acc1",
    RETRIEVAL: "mean_recall@1",
    MULTILABEL: "mAP",
    WINOGAVIL: "jaccard_score_10-12",
}
# Every metric a task type produces; a suite may only name one of these as its main metric.
# Classification metrics that only a task with `group_by` produces.
GROUP_METRICS = ("acc1_worst_group", "acc5_worst_group")
METRIC_NAMES = {
    CLASSIFICATION: ("acc1", "acc5", "mean_per_class_recall", "f1_macro", *GROUP_METRICS),
    RETRIEVAL: tuple(f"{direction}_retrieval_recall@{k}" for direction in ("image", "text") for k in (1, 5, 10))
    + ("mean_recall@1",),
    MULTILABEL: ("mAP",),
    WINOGAVIL: ("jaccard_score_10-12", "jaccard_score_5-6", "avg_jaccard_score"),
}
# dataset_type.txt uses CLIP_benchmark's words; suites use DataComp's task types.
_DATASET_TYPES = {
    "classification": CLASSIFICATION,
    "retrieval": RETRIEVAL,
    "multilabel": MULTILABEL,
    "winogavil": WINOGAVIL,
}
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
# Suites shipped inside the package, loadable by name: load_suite("datacomp").
BUILTIN_SUITES = ("datacomp",)


@dataclass
class TaskSpec:
    """One suite entry: which task, how it is scored."""

    name: str
    type: str  # CLASSIFICATION, RETRIEVAL or MULTILABEL
    main_metric: str
    description: str = ""
    group_by: int | None = None  # classification: column of the samples' npy metadata to group by
    aliases: tuple[str, ...] = ()  # other directory names the task is found under (see find_task_dir)

    def find_task_dir(self, root: Path) -> Path | None:
        """The task's directory under `root`: `<name>`, `<name>_test` (what DataComp's
        download_evalsets.py names it) or one of the aliases; None when none exists."""
        for candidate in self.directory_names:
            if (Path(root) / candidate).is_dir():
                return Path(root) / candidate
        return None

    @property
    def directory_names(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}_test", *self.aliases)


@dataclass
class SampleStats:
    """What streaming a task read, so skipped samples are reported instead of vanishing."""

    n_yielded: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, key: str) -> None:
        self.skipped[reason] += 1
        log.debug("skipping sample %s: %s", key, reason)

    def add(self, other: SampleStats) -> None:
        """Fold in counts made elsewhere (a DataLoader worker's share of the task)."""
        self.n_yielded += other.n_yielded
        self.skipped.update(other.skipped)


def suite_path(suite: str | Path) -> Path:
    """A suite file's path; a built-in name ("datacomp") resolves to the YAML shipped in the package."""
    if isinstance(suite, str) and suite in BUILTIN_SUITES:
        return Path(str(resources.files("latentspace.eval") / "suites" / f"{suite}.yaml"))
    return Path(suite)


def load_suite(path: str | Path, data_dir: str | Path | None = None) -> tuple[str, list[TaskSpec], Path]:
    """Read a suite YAML; returns (suite name, tasks, directory holding the task directories).

    Task directories sit beside the YAML unless `data_dir` is given; then each task resolves to
    `<data_dir>/<task name>` (needed for built-in suites, whose YAML lives inside the package).
    """
    path = suite_path(path)
    raw = _read_suite(path)
    specs = [_parse_task(entry, path) for entry in raw["tasks"]]
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate task names {duplicates}")
    _parse_groups(raw, set(names), path)  # validated here so a bad group fails before evaluation
    root = Path(data_dir) if data_dir is not None else path.parent
    return str(raw.get("name", path.stem)), specs, root


def load_groups(path: str | Path) -> dict[str, list[str]]:
    """The suite's named sub-averages (group -> task names); empty when it declares none."""
    path = suite_path(path)
    raw = _read_suite(path)
    names = {str(entry.get("name")) for entry in raw["tasks"] if isinstance(entry, dict)}
    return _parse_groups(raw, names, path)


def _read_suite(path: Path) -> dict:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), list):
        raise ValueError(f"{path}: a suite needs a 'tasks' list")
    return raw


def _parse_groups(raw: dict, task_names: set[str], path: Path) -> dict[str, list[str]]:
    """Check every group is a non-empty list of the suite's own task names."""
    groups = raw.get("groups") or {}
    if not isinstance(groups, dict):
        raise ValueError(f"{path}: 'groups' must map a group name to a list of task names")
    parsed = {}
    for group, members in groups.items():
        if not isinstance(members, list) or not members:
            raise ValueError(f"{path}: group {group!r} needs a non-empty list of task names")
        unknown = sorted(set(map(str, members)) - task_names)
        if unknown:
            raise ValueError(f"{path}: group {group!r} names tasks not in the suite: {unknown}")
        parsed[str(group)] = [str(member) for member in members]
    return parsed


def _parse_task(entry: object, suite_path: Path) -> TaskSpec:
    """Validate one suite entry now, so a typo fails before hours of evaluation, not after."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"{suite_path}: each task needs a 'name', got {entry!r}")
    task_type = entry.get("type", CLASSIFICATION)
    if task_type not in METRIC_NAMES:
        raise ValueError(
            f"{suite_path}: task {entry['name']!r} has type {task_type!r}; expected one of {sorted(METRIC_NAMES)}"
        )
    main_metric = entry.get("main_metric", DEFAULT_MAIN_METRIC[task_type])
    if main_metric not in METRIC_NAMES[task_type]:
        raise ValueError(
            f"{suite_path}: task {entry['name']!r} ({task_type}) cannot rank by {main_metric!r}; "
            f"choose from {list(METRIC_NAMES[task_type])}"
        )
    group_by = entry.get("group_by")
    if group_by is not None and (
        task_type != CLASSIFICATION or not isinstance(group_by, int) or isinstance(group_by, bool) or group_by < 0
    ):
        raise ValueError(
            f"{suite_path}: task {entry['name']!r}: group_by must be a column number (0, 1, ...) "
            f"of the samples' npy metadata, on a {CLASSIFICATION} task; got {group_by!r}"
        )
    if main_metric in GROUP_METRICS and group_by is None:
        raise ValueError(
            f"{suite_path}: task {entry['name']!r} ranks by {main_metric!r}, which needs "
            "group_by: the npy metadata column that says each sample's group"
        )
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ValueError(f"{suite_path}: task {entry['name']!r}: aliases must be a list of directory names")
    return TaskSpec(
        str(entry["name"]), task_type, main_metric, str(entry.get("description", "")), group_by, tuple(aliases)
    )


def task_type_of(task_dir: Path) -> str:
    """The task type the directory declares (dataset_type.txt; WinoGAViL's release CSV; else
    classification)."""
    type_file = _existing_dir(task_dir) / "dataset_type.txt"
    if not type_file.exists():
        return WINOGAVIL if (Path(task_dir) / WINOGAVIL_CSV).is_file() else CLASSIFICATION
    declared = type_file.read_text().strip()
    if declared not in _DATASET_TYPES:
        raise ValueError(f"{type_file}: unknown dataset type {declared!r}")
    return _DATASET_TYPES[declared]


def read_classnames(task_dir: Path) -> list[str]:
    return _read_lines(_existing_dir(task_dir) / "classnames.txt")


def read_templates(task_dir: Path) -> list[str]:
    """Prompt templates; a task without a templates file is prompted with the bare class name."""
    path = _existing_dir(task_dir) / "zeroshot_classification_templates.txt"
    if not path.exists():
        return ["{c}"]
    templates = _read_lines(path)
    for template in templates:
        if "{c}" not in template:
            raise ValueError(f"{path}: template {template!r} has no {{c}} placeholder")
    return templates


def is_image_folder(task_dir: Path) -> bool:
    """An ImageFolder task: test/ holds class folders and no shard count."""
    test_dir = _existing_dir(task_dir) / "test"
    return (
        test_dir.is_dir()
        and not (test_dir / "nshards.txt").exists()
        and any(child.is_dir() for child in test_dir.iterdir())
    )


def shard_paths(task_dir: Path) -> list[Path]:
    """All test shards, checked to exist up front so a broken task fails before any work."""
    test_dir = _existing_dir(task_dir) / "test"
    nshards_file = test_dir / "nshards.txt"
    if not nshards_file.exists():
        raise FileNotFoundError(f"missing shard count file: {nshards_file}")
    shards = [test_dir / f"{i}.tar" for i in range(int(nshards_file.read_text().strip()))]
    for shard in shards:
        if not shard.exists():
            raise FileNotFoundError(f"missing shard: {shard}")
    return shards


def iter_task_samples(
    task_dir: Path, task_type: str | None = None, stats: SampleStats | None = None, group_by: int | None = None
) -> Iterator[tuple[Image.Image, int | list[int] | list[str] | tuple[int, int], str]]:
    """Stream (image, target, key) from a task, one sample at a time.

    The target is a class index (classification), a list of class indices (multilabel) or a
    list of captions (retrieval); with `group_by`, (class index, group). `task_type` defaults to
    what the directory declares. Samples with an undecodable image or a missing/invalid label
    are skipped and counted in `stats` (pass one in to read the counts). Shards and ImageFolder
    layouts are both read.
    """
    task_dir = Path(task_dir)
    task_type = task_type or task_type_of(task_dir)
    stats = stats if stats is not None else SampleStats()
    read = sample_reader(task_dir, task_type, group_by)
    for _, sample in raw_task_samples(task_dir, task_type):
        image, target, reason = read(sample)
        if reason is not None:
            stats.skip(reason, sample["__key__"])
            continue
        stats.n_yielded += 1
        yield image, target, sample["__key__"]


def raw_task_samples(
    task_dir: Path, task_type: str, keep: Callable[[int], bool] | None = None
) -> Iterator[tuple[int, dict]]:
    """(position, undecoded sample) for every sample of the task in order, or only the positions
    `keep` accepts. Positions count every sample, usable or not, so they are fixed by the task
    alone: DataLoader workers split a task by position and each decodes only its own share."""
    task_dir = Path(task_dir)
    if is_image_folder(task_dir):
        if task_type != CLASSIFICATION:
            raise ValueError(f"{task_dir}: an ImageFolder task must be classification, not {task_type!r}")
        yield from _image_folder_samples(task_dir, keep)
        return
    for index, sample in enumerate(_raw_samples(shard_paths(task_dir))):
        if keep is None or keep(index):
            yield index, sample


def sample_reader(
    task_dir: Path, task_type: str, group_by: int | None = None
) -> Callable[[dict], tuple[Image.Image | None, object, str | None]]:
    """A function: undecoded sample -> (image, target, None), or (None, None, reason to skip it).
    With `group_by`, the target is (class index, the sample's group from its npy metadata)."""
    parse_target = _target_parser(task_dir, task_type)
    if group_by is not None:
        if task_type != CLASSIFICATION:
            raise ValueError(f"group_by applies to {CLASSIFICATION} tasks, not {task_type!r}")
        parse_target = _with_group(parse_target, group_by)

    def read(sample: dict):
        target, reason = parse_target(sample)
        if reason is not None:
            return None, None, reason
        image, reason = _decode_image(sample)
        return (None, None, reason) if reason is not None else (image, target, None)

    return read


def _raw_samples(shards: list[Path]) -> Iterator[dict]:
    """Group tar members into samples with webdataset's own key convention, shard by shard."""
    for shard in shards:
        with open(shard, "rb") as stream:
            files = tar_file_expander([{"url": str(shard), "stream": stream}])
            yield from group_by_keys(files)


def _image_folder_samples(task_dir: Path, keep: Callable[[int], bool] | None) -> Iterator[tuple[int, dict]]:
    """Samples shaped like webdataset's, from test/<class_dir>/<image>: cls = sorted folder index.
    Files at positions `keep` rejects are not even read.

    classnames.txt must have one line per class folder, or labels and names would silently
    disagree.
    """
    class_dirs = sorted(child for child in (task_dir / "test").iterdir() if child.is_dir())
    n_names = len(read_classnames(task_dir))
    if n_names != len(class_dirs):
        raise ValueError(
            f"{task_dir}: classnames.txt has {n_names} names but test/ has {len(class_dirs)} class folders"
        )
    index = 0
    for label, class_dir in enumerate(class_dirs):
        for image_path in sorted(class_dir.iterdir()):
            suffix = image_path.suffix.lower().lstrip(".")
            if suffix in IMAGE_KEYS and image_path.is_file():
                if keep is None or keep(index):
                    key = f"{class_dir.name}/{image_path.stem}"
                    yield index, {"__key__": key, suffix: image_path.read_bytes(), "cls": str(label)}
                index += 1


def _target_parser(task_dir: Path, task_type: str):
    """A function sample -> (target, None) or (None, reason to skip) for this task type."""
    if task_type == RETRIEVAL:
        return _parse_captions
    if task_type not in (CLASSIFICATION, MULTILABEL):
        raise ValueError(f"unknown task type {task_type!r}")
    n_classes = len(read_classnames(task_dir))
    if task_type == MULTILABEL:
        return lambda sample: _parse_class_set(sample, n_classes)
    return lambda sample: _parse_class(sample, n_classes)


def _parse_class(sample: dict, n_classes: int) -> tuple[int | None, str | None]:
    if "cls" not in sample:
        return None, "missing cls"
    try:
        label = int(_text(sample["cls"]).strip())
    except ValueError:
        return None, "invalid cls"
    if not 0 <= label < n_classes:
        return None, "cls out of range"
    return label, None


def _with_group(parse_target, column: int):
    def parse(sample: dict):
        target, reason = parse_target(sample)
        if reason is not None:
            return None, reason
        group, reason = _parse_group(sample, column)
        return (None, reason) if reason is not None else ((target, group), None)

    return parse


def _parse_group(sample: dict, column: int) -> tuple[int | None, str | None]:
    """Column `column` of the sample's npy metadata array, as an integer group id."""
    if "npy" not in sample:
        return None, "missing npy"
    try:
        metadata = np.load(io.BytesIO(sample["npy"]), allow_pickle=False).reshape(-1)
    except Exception:  # numpy raises ValueError, OSError, EOFError... on bad bytes
        return None, "invalid npy"
    if column >= len(metadata):
        return None, f"npy has no column {column}"
    value = metadata[column]
    if not np.issubdtype(metadata.dtype, np.integer) and not float(value).is_integer():
        return None, "npy group is not an integer"
    return int(value), None


def _parse_class_set(sample: dict, n_classes: int) -> tuple[list[int] | None, str | None]:
    """Comma-separated class indices ("0,3"); an empty field means no class is present."""
    if "cls" not in sample:
        return None, "missing cls"
    try:
        text = _text(sample["cls"]).strip()
        labels = sorted({int(part) for part in text.split(",") if part.strip()})
    except (ValueError, UnicodeDecodeError):
        return None, "invalid cls"
    if any(not 0 <= label < n_classes for label in labels):
        return None, "cls out of range"
    return labels, None


def _parse_captions(sample: dict) -> tuple[list[str] | None, str | None]:
    if "txt" not in sample:
        return None, "missing txt"
    try:
        text = _text(sample["txt"])
    except UnicodeDecodeError:
        return None, "invalid txt"
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    return (captions, None) if captions else (None, "empty txt")


def _decode_image(sample: dict) -> tuple[Image.Image | None, str | None]:
    """Fully decode now (PIL is lazy), so a corrupt file is caught here, not inside the model."""
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if image_key is None:
        return None, "missing image"
    try:  # the decoder training and serving use: decompression-bomb guard, RGB out
        return decode_image(sample[image_key], name=str(sample.get("__key__", "image"))), None
    except ImageDecodeError:
        return None, "undecodable image"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"missing task file: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _existing_dir(task_dir: Path) -> Path:
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise FileNotFoundError(f"missing task directory: {task_dir}")
    return task_dir
