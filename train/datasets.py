"""Dataset layouts → a flat list of `Recording`s, and the seeded, group-wise, stratified train/validation/test split.

Three layouts are read (`load_dataset` tells them apart):

(a) folder per species: `DATA/<species_code>/*.wav|flac|ogg|mp3` (nested folders inside a species folder are
    read too). If `DATA/snippets.csv` has `file, species_code, recording_run` (the essential-set layout), the
    group of a file is its species + recording run and common names come from `common_name`; without it, file
    names ending in `_runRRRR_IIIII` give the run too.
(b) BirdCLEF/Cornell: a `train.csv` with `primary_label, secondary_labels, filename` (`secondary_labels` a
    Python-list string like "['amecro', 'norcar']", or space/semicolon/comma separated); audio in
    `AUDIO/<primary_label>/<filename>` or `AUDIO/<filename>`, AUDIO being `train_audio/` beside the CSV when it
    exists, else the CSV's folder. A `recording_run` (or `group`) column, when present, names the group.
(c) xeno-canto (`../shared/data/xc-puerto-rico`): folder per species + `metadata.csv` with
    `filepath, label, also, ...`; `also` holds scientific names separated by ';', mapped to labels present
    (labels are scientific names with '_' for ' ').
(d) the Alberta Ovenbird clips (`../shared/data/ovenbird-alberta`): `labels.csv` with `file`, `final_label`
    (the individual bird) and `localization_event_id`; each 10-s clip holds one Ovenbird song at 3.5-6.5 s
    (`Recording.call_s`: crops keep it). The group is the individual, so one bird's songs never sit on two
    sides of a split.

A *group* is what the split never cuts across: one file, or one recording run of snippets. Group ids are
prefixed with the dataset folder's name so that several datasets can be split together.

The split (`split_groups`): training; validation, for checkpoint choice and per-species thresholds; test, for
figures only — never read while training or calibrating. `Holdout` (a small JSON) names files kept out of all
three (the project's demo recording) and noise files kept out of training backgrounds.
"""
from __future__ import annotations

import ast
import csv
import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from birdlive.errors import BirdliveError
from birdlive.files import AUDIO_EXTENSIONS, is_audio

RUN_IN_NAME = re.compile(r"_run(\d+)_\d+$")      # essential-set file names: <species>_runRRRR_IIIII
SUBSPECIES_NAME = re.compile(r"^(?P<species>[^()]+?)\s*\((?P<subspecies>[^()]+)\)\s*$")   # "Fox Sparrow (Sooty)"


class DatasetError(BirdliveError):
    """A dataset cannot be read; the message says why, in one line."""


@dataclass
class Recording:
    path: str                                   # absolute path of the audio file
    labels: list[str]                           # species present (primary first)
    secondary: list[str] = field(default_factory=list)  # species heard in the background (weak, uncertain)
    group: str = ""                             # split unit: file, or recording run
    duration_s: float | None = None             # when the layout says so (snippets.csv)
    call_s: tuple[float, float] | None = None   # a call of the primary species known to lie here: crops keep it

    @property
    def primary(self) -> str:
        return self.labels[0]


@dataclass
class Dataset:
    """Recordings of one layout plus what the layout knows about the species (common names)."""
    root: str
    recordings: list[Recording]
    names: dict[str, str] = field(default_factory=dict)   # label → common name

    @property
    def labels(self) -> list[str]:
        return sorted({lab for r in self.recordings for lab in r.labels})


def _is_audio(p: Path) -> bool:
    return p.is_file() and is_audio(p)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def parse_label_list(text: str | None) -> list[str]:
    """"['a', 'b']" / "a b" / "a;b" / "a, b" / "" / "[]" → ['a', 'b'] (order kept, duplicates dropped)."""
    text = (text or "").strip()
    if not text:
        return []
    items: list[str]
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
            items = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        except (ValueError, SyntaxError):
            items = re.split(r"[\s;,]+", text.strip("[]"))
    else:
        items = re.split(r"[;,]+", text) if re.search(r"[;,]", text) else text.split()
    out = []
    for it in (i.strip().strip("'\"") for i in items):
        if it and it not in out:
            out.append(it)
    return out


def species_of(code: str, common_name: str) -> tuple[str, str]:
    """(species code, common name) of a subspecies code, as birders (and BirdNET) name the bird: the essential set
    files Dark-eyed Junco under `dark_eyed_junco_slate_colored`, "Dark-eyed Junco (Slate-colored)"; it becomes
    `dark_eyed_junco`, "Dark-eyed Junco". A code is merged only when it is the species' code plus a suffix, so a
    name with parentheses that is not a subspecies stays as it is."""
    m = SUBSPECIES_NAME.match(common_name or "")
    if not m:
        return code, common_name
    species_code = re.sub(r"[^a-z0-9]+", "_", m["species"].lower()).strip("_")
    if code.startswith(species_code + "_"):
        return species_code, m["species"]
    return code, common_name


def read_folder_per_species(root: str | Path) -> Dataset:
    root = Path(root).resolve()
    species_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    recs, names = [], {}
    snippets = root / "snippets.csv"
    runs: dict[str, tuple[str, str, float | None]] = {}
    if snippets.is_file():
        for row in _read_csv(snippets):
            if "file" in row and "species_code" in row:
                dur_text = row.get("duration_s")
                runs[row["file"]] = (row["species_code"], row.get("recording_run", ""),
                                     float(dur_text) if dur_text not in (None, "") else None)
                if row.get("common_name"):
                    names[row["species_code"]] = row["common_name"]
    # subspecies codes → their species; run numbers restart per code, so a group keeps the code it was filed under
    species_code = {code: species_of(code, nm) for code, nm in names.items()}
    names = {sp: nm for sp, nm in species_code.values()}
    for d in species_dirs:
        for f in sorted(p for p in d.rglob("*") if _is_audio(p)):
            rel = f.relative_to(root).as_posix()
            code, run, dur = runs.get(rel, (d.name, "", None))
            species = species_code.get(code, (code, ""))[0]
            if run == "" and (m := RUN_IN_NAME.search(f.stem)):
                run = str(int(m.group(1)))
            group = f"{root.name}:{code}/run{run}" if run != "" else f"{root.name}:{rel}"
            recs.append(Recording(str(f), [species], [], group, dur))
    if not recs:
        raise DatasetError(f"{root}: no audio files ({'/'.join(e[1:] for e in AUDIO_EXTENSIONS)}) in species folders")
    return Dataset(str(root), recs, names)


def read_birdclef_csv(csv_path: str | Path, audio_dir: str | Path | None = None) -> Dataset:
    csv_path = Path(csv_path).resolve()
    rows = _read_csv(csv_path)
    if not rows or not {"primary_label", "filename"} <= set(rows[0]):
        raise DatasetError(f"{csv_path}: needs columns primary_label, filename (and optionally secondary_labels)")
    if audio_dir is None:
        audio_dir = csv_path.parent / "train_audio"
        if not audio_dir.is_dir():
            audio_dir = csv_path.parent
    audio_dir = Path(audio_dir).resolve()
    recs, names, missing = [], {}, 0
    for row in rows:
        primary, fname = row["primary_label"].strip(), row["filename"].strip()
        path = audio_dir / primary / fname
        if not path.is_file():
            path = audio_dir / fname
        if not path.is_file():
            missing += 1
            continue
        secondary = [s for s in parse_label_list(row.get("secondary_labels")) if s != primary]
        run = (row.get("recording_run") or row.get("group") or "").strip()
        rel = path.relative_to(audio_dir).as_posix()
        group = f"{audio_dir.name}:{primary}/run{run}" if run else f"{audio_dir.name}:{rel}"
        recs.append(Recording(str(path), [primary], secondary, group))
        if row.get("common_name"):
            names[primary] = row["common_name"]
    if not recs:
        raise DatasetError(f"{csv_path}: none of its {len(rows)} files found under {audio_dir}")
    # secondary labels that never occur as a primary have no output unit: drop them
    primaries = {r.primary for r in recs}
    for r in recs:
        r.secondary = [s for s in r.secondary if s in primaries]
    return Dataset(str(audio_dir), recs, names)


def read_xeno_canto(root: str | Path) -> Dataset:
    root = Path(root).resolve()
    rows = _read_csv(root / "metadata.csv")
    if not rows or not {"filepath", "label"} <= set(rows[0]):
        raise DatasetError(f"{root / 'metadata.csv'}: needs columns filepath, label (and optionally also)")
    sci_to_label = {}
    names = {}
    for row in rows:
        lab = row["label"].strip()
        sci_to_label[lab.replace("_", " ").lower()] = lab
        if row.get("scientific_name"):
            sci_to_label[row["scientific_name"].strip().lower()] = lab
        if row.get("common_name"):
            names[lab] = row["common_name"].strip()
    recs = []
    for row in rows:
        path = root / row["filepath"]
        if not _is_audio(path):
            continue
        lab = row["label"].strip()
        also = [sci_to_label.get(s.strip().lower()) for s in (row.get("also") or "").split(";")]
        secondary = list(dict.fromkeys(a for a in also if a and a != lab))
        recs.append(Recording(str(path), [lab], secondary, f"{root.name}:{row['filepath']}"))
    if not recs:
        raise DatasetError(f"{root}: metadata.csv lists no audio file that exists")
    return Dataset(str(root), recs, names)


OVENBIRD_SONG_S = (3.5, 6.5)       # where every Alberta clip's localized song lies (the data set's README)


def read_ovenbird_alberta(root: str | Path) -> Dataset:
    root = Path(root).resolve()
    recs = []
    for row in _read_csv(root / "labels.csv"):
        path = root / row["file"]
        if _is_audio(path):
            recs.append(Recording(str(path), ["ovenbird"], [], f"{root.name}:bird{row['final_label']}",
                                  call_s=OVENBIRD_SONG_S))
    if not recs:
        raise DatasetError(f"{root / 'labels.csv'}: lists no audio file that exists")
    return Dataset(str(root), recs, {"ovenbird": "Ovenbird"})


def load_dataset(path: str | Path) -> Dataset:
    """Reads any of the three layouts; `path` is a folder, or a BirdCLEF-style CSV file."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise DatasetError(f"{p}: expected a folder or a BirdCLEF-style .csv")
        header = next(csv.reader(open(p, newline="", encoding="utf-8-sig")), [])
        if "filepath" in header and "label" in header:
            return read_xeno_canto(p.parent)
        return read_birdclef_csv(p)
    meta = p / "metadata.csv"
    if meta.is_file():
        header = next(csv.reader(open(meta, newline="", encoding="utf-8-sig")), [])
        if "filepath" in header and "label" in header:
            return read_xeno_canto(p)
    if (p / "train.csv").is_file():
        return read_birdclef_csv(p / "train.csv")
    labels = p / "labels.csv"
    if labels.is_file() and {"file", "final_label", "localization_event_id"} <= set(
            next(csv.reader(open(labels, newline="", encoding="utf-8-sig")), [])):
        return read_ovenbird_alberta(p)
    return read_folder_per_species(p)


def name_key(name: str) -> str:
    """Common name → comparison key: case, punctuation and grey/gray spelling ignored."""
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("grey", "gray"))


def merge(datasets: list[Dataset], unify_names: bool = True) -> tuple[list[Recording], list[str], list[str]]:
    """All recordings, the sorted label set, and the common names in that order ("" where unknown).

    With `unify_names`, a species that two datasets label differently but name alike (xeno-canto's
    `Coereba_flaveola` and the essential set's `bananaquit`, both "Bananaquit") gets one label: the one of the
    first dataset (in the order given) that has it. Recordings are relabelled in place."""
    recs = [r for d in datasets for r in d.recordings]
    names: dict[str, str] = {}
    if unify_names:
        by_key: dict[str, str] = {}
        for d in datasets:
            rename = {}
            for lab, nm in d.names.items():
                k = name_key(nm) if nm else ""
                if k and k in by_key and by_key[k] != lab:
                    rename[lab] = by_key[k]
                elif k:
                    by_key.setdefault(k, lab)
            for r in d.recordings:
                r.labels = list(dict.fromkeys(rename.get(x, x) for x in r.labels))
                r.secondary = list(dict.fromkeys(rename.get(x, x) for x in r.secondary))
            for lab, nm in d.names.items():
                names.setdefault(rename.get(lab, lab), nm)
    else:
        for d in datasets:
            for lab, nm in d.names.items():
                names.setdefault(lab, nm)
    labels = sorted({lab for r in recs for lab in r.labels})
    known = set(labels)
    for r in recs:
        r.secondary = [s for s in r.secondary if s in known and s not in r.labels]
    return recs, labels, [names.get(lab, "") for lab in labels]


def select_species(recs: list[Recording], labels: list[str], names: list[str], species: list[str]):
    """Keep only `species` (labels or common names, matched like `name_key`): their recordings, and only their
    labels on those recordings. Returns (recs, labels, names); labels is empty when none matched."""
    want = {name_key(x) for x in species}
    keep = {lab for lab, nm in zip(labels, names) if name_key(lab) in want or (nm and name_key(nm) in want)}
    recs = [r for r in recs if r.primary in keep]
    for r in recs:
        r.secondary = [x for x in r.secondary if x in keep]
        r.labels = [x for x in r.labels if x in keep]
    return recs, [lab for lab in labels if lab in keep], [nm for lab, nm in zip(labels, names) if lab in keep]


# ----------------------------------------------------------------------------------------------- the split

SUBSETS = ("train", "val", "test")


@dataclass
class Split:
    """Group ids in training, validation (checkpoint choice, thresholds) and test (figures only); `excluded` groups
    (a demo recording, say) are in none. Two-way splits from before the test subset load with `test` empty."""
    seed: int
    val_fraction: float
    train: list[str]            # group ids
    val: list[str]
    sources: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    test_fraction: float = 0.0
    excluded: list[str] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        d = asdict(self)
        d["counts"] = {f"{s}_groups": len(getattr(self, s)) for s in SUBSETS} | {"excluded_groups": len(self.excluded)}
        Path(path).write_text(json.dumps(d, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        d = json.loads(Path(path).read_text())
        return cls(d["seed"], d["val_fraction"], d["train"], d["val"], d.get("sources", []), d.get("test", []),
                   d.get("test_fraction", 0.0), d.get("excluded", []))

    def select(self, recs: list[Recording], subset: str) -> list[Recording]:
        if subset not in SUBSETS:
            raise ValueError(f"no subset {subset!r}; one of {', '.join(SUBSETS)}")
        keep = set(getattr(self, subset))
        return [r for r in recs if r.group in keep]


def is_excluded(path: str | Path, exclude: list[str] | tuple[str, ...]) -> bool:
    """`exclude` holds xeno-canto ids ("XC737279") or file names or paths ("recordings/XC737279.mp3"): a file is
    excluded when its name without extension is one of theirs, wherever it lies (a copy in the project's
    recordings/ is the same recording as the one in the data set)."""
    stems = {Path(e).stem.lower() for e in exclude}
    return Path(path).stem.lower() in stems


def subset_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(validation, test) groups out of n: with n >= 3 at least one of each (when the fraction is > 0), with n = 2
    one for validation and none for test, with n = 1 none; training always keeps at least one."""
    n_val = 0 if n < 2 or val_fraction <= 0 else max(1, int(round(val_fraction * n)))
    n_test = 0 if n < 3 or test_fraction <= 0 else max(1, int(round(test_fraction * n)))
    while n_val + n_test > n - 1:                          # large fractions: training keeps one
        if n_test > 1 or (n_test and not n_val):
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def split_groups(recs: list[Recording], val_fraction: float = 0.2, seed: int = 0, test_fraction: float = 0.0,
                 exclude: list[str] | tuple[str, ...] = ()) -> Split:
    """Group-wise split, stratified by species and source: for each species and each data set it comes from
    (the group id's prefix), a seeded shuffle of its groups, then `subset_sizes` of them go to test and to
    validation. Stratifying by source too keeps, say, the xeno-canto recordings of a species that the snippet
    set also has in every subset, instead of leaving them all to chance. A species with two or more groups whose
    sources are each too small for a validation group (one recording here, one run there) gets one moved from
    training. A group whose files carry several primary species is assigned through its most common one. A group
    with any file in `exclude` (see `is_excluded`) is in no subset. No group is in two subsets."""
    group_species: dict[str, Counter] = defaultdict(Counter)
    excluded = set()
    for r in recs:
        group_species[r.group][r.primary] += 1
        if exclude and is_excluded(r.path, exclude):
            excluded.add(r.group)
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for g in sorted(set(group_species) - excluded):
        strata[(group_species[g].most_common(1)[0][0], g.split(":", 1)[0])].append(g)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: {s: [] for s in SUBSETS})   # species → subsets
    for sp, source in sorted(strata):
        groups = list(strata[(sp, source)])
        rng.shuffle(groups)
        n_val, n_test = subset_sizes(len(groups), val_fraction, test_fraction)
        out[sp]["test"] += groups[:n_test]
        out[sp]["val"] += groups[n_test:n_test + n_val]
        out[sp]["train"] += groups[n_test + n_val:]
    for sub in out.values():
        if not sub["val"] and val_fraction > 0 and len(sub["train"]) >= 2:
            sub["val"].append(sub["train"].pop())
    pick = {s: sorted(g for sub in out.values() for g in sub[s]) for s in SUBSETS}
    return Split(seed, val_fraction, pick["train"], pick["val"], test=pick["test"], test_fraction=test_fraction,
                 excluded=sorted(excluded))


def extend_split(split: Split, recs: list[Recording], exclude: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Adds to `split` the groups of `recs` it does not know (a new data set, or species the split was made
    without), split among themselves by `split_groups` with the split's seed and fractions; the groups it knows
    stay where they are, so a validation set stays unseen by every model trained on the old split. Returns the
    new group ids."""
    known = set(split.train) | set(split.val) | set(split.test) | set(split.excluded)
    new = [r for r in recs if r.group not in known]
    if not new:
        return []
    more = split_groups(new, split.val_fraction, split.seed, split.test_fraction, exclude)
    for subset in SUBSETS + ("excluded",):
        getattr(split, subset).extend(getattr(more, subset))
        getattr(split, subset).sort()
    return sorted({r.group for r in new})


def split_counts(recs: list[Recording], split: Split) -> dict[str, dict[str, dict[str, int]]]:
    """Groups (recordings, or recording runs) per species, subset and source: {species: {subset: {source: n}}},
    subsets `train`, `val`, `test`, `excluded` — the table the model card shows."""
    where = {g: s for s in SUBSETS + ("excluded",) for g in getattr(split, s)}
    seen: dict[str, str] = {}
    for r in recs:
        seen.setdefault(r.group, r.primary)
    out: dict[str, dict[str, dict[str, int]]] = {}
    for g, sp in seen.items():
        subset = where.get(g)
        if subset is None:
            continue
        source = g.split(":", 1)[0]
        cell = out.setdefault(sp, {s: {} for s in SUBSETS + ("excluded",)})[subset]
        cell[source] = cell.get(source, 0) + 1
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------- held-out files

@dataclass
class Holdout:
    """Files kept out of training for good: `exclude` (xeno-canto ids or paths, `is_excluded`) in no split at all —
    the demo recording of the project's recordings/; `noise` (paths relative to the noise folder) are never
    training backgrounds, so that "no events on noise" can be checked on noise the model never heard."""
    exclude: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path | None) -> "Holdout":
        if not path:
            return cls()
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: not a hold-out list ({e})") from None
        return cls(list(d.get("exclude", [])), list(d.get("noise", [])))

    def training_noise(self, files: list[str], noise_dir: str | Path) -> list[str]:
        """`files` (a noise folder's files) without the held-out ones."""
        held = {(Path(noise_dir) / n).resolve() for n in self.noise}
        return [f for f in files if Path(f).resolve() not in held]

    def heldout_noise(self, noise_dir: str | Path) -> list[Path]:
        """The held-out noise files that exist under `noise_dir` (DatasetError when one is missing)."""
        paths = [Path(noise_dir) / n for n in self.noise]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"held-out noise file {missing[0]} does not exist")
        return paths
