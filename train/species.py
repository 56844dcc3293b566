"""The default model's species (v3): the rule, as code, so that the list can be rebuilt and checked.

    python -m birdlive.train.species ../shared/data/xc-puerto-rico ../shared/data/essential-set \
        --out model/weights/default_species_v3.txt --report species_v3.md

v3 = v2's rule on the essential set read with subspecies merged into their species (`datasets.species_of`:
Yellow-rumped Warbler, Fox Sparrow and Dark-eyed Junco were only filed under subspecies codes), with two changes
that keep every v2 species and add the commonest birds: `NA_MAX` 152 (v2: 150), so that the two birds the merge
lets qualify (Yellow-rumped Warbler, Fox Sparrow) do not push out two v2 species (Pine Siskin, Cassin's Finch);
and the yard birds of group 1 of `COMMON_NORTH_AMERICA` are in with a single recording run too (`YARD_BIRDS`:
Dark-eyed Junco, Blue Jay, Downy Woodpecker ...): one run trains them, none validates them — a model that has
never heard the commonest birds names them as something else.

Puerto Rico — every species of the xeno-canto set with at least `PR_MIN_RECORDINGS` (3) recordings, so that
each can have one in training, one in validation and one in test; the 20 species of the first release all have
8-14. The four frogs whose calls fill Puerto Rican nights are in whatever their count (the issue asks for them):
the coqui has two recordings (one trains, one validates), the other three one each (training only: no figure
will speak for them, and the model card says so).

North America — a birder's list, not a data count: `COMMON_NORTH_AMERICA` is written by hand from what eBird
checklists report most often in backyards, parks and woodland (year-round residents first, then the common
breeding migrants, then regional birds a local birder hears daily: the West, the Southwest, the Southeast, the
North), spelled as the essential set names them. A species is kept when the data can train and validate it:
`NA_MIN_GROUPS` (2) groups — recording runs of the essential set plus xeno-canto recordings of the same species.
The essential set has few runs for most common birds (Blue Jay, Downy Woodpecker, Chipping Sparrow: one; Northern
Cardinal, Carolina Wren, Red-eyed Vireo: two; only 114 of its 700 species have four or more — mostly the
alphabetically first, which is how the first list came to hold Berylline Hummingbird). Of the 248 birds below,
234 are in the data; four groups would keep 47 of them, three 96, two 205: two keeps the birds people hear, with
one run to train on and one to validate (three or more give a test run too). The first `NA_MAX` (150) that
qualify are taken, in list order, which cuts into the winter visitors and passage migrants (group 3).

Names that two data sets spell alike get one label (`merge`), so Bananaquit, Mourning Dove or American Coot are
one species with both the xeno-canto recordings and the snippet runs.
"""
from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .datasets import SUBSETS, Dataset, Recording, Split, load_dataset, merge, name_key, select_species, split_counts

PR_MIN_RECORDINGS = 3
NA_MIN_GROUPS = 2
NA_MAX = 152

FROGS = ("Eleutherodactylus_coqui", "Eleutherodactylus_brittoni", "Eleutherodactylus_cochranae",
         "Leptodactylus_albilabris")

FIRST_RELEASE = (   # the 20 Puerto Rican species of the first default model
    "Agelaius_xanthomus", "Amazona_vittata", "Antrostomus_noctitherus", "Coccyzus_vieilloti", "Coereba_flaveola",
    "Crotophaga_ani", "Elaenia_martinica", "Gymnasio_nudipes", "Icterus_portoricensis", "Margarops_fuscatus",
    "Melanerpes_portoricensis", "Melopyrrha_portoricensis", "Nesospingus_speculiferus", "Quiscalus_niger",
    "Setophaga_adelaidae", "Todus_mexicanus", "Turdus_plumbeus", "Tyrannus_dominicensis", "Vireo_altiloquus",
    "Vireo_latimeri")

COMMON_NORTH_AMERICA = (
    # 1. heard in yards and parks every day, somewhere on the continent: residents, continent-wide, then the West,
    #    the Southwest and Texas, the Southeast, the North woods
    "American Robin", "Northern Cardinal", "Mourning Dove", "American Crow", "Blue Jay", "Song Sparrow",
    "House Finch", "American Goldfinch", "Black-capped Chickadee", "Carolina Chickadee", "Downy Woodpecker",
    "Red-bellied Woodpecker", "Northern Flicker", "Hairy Woodpecker", "White-breasted Nuthatch", "Tufted Titmouse",
    "Carolina Wren", "Northern Mockingbird", "European Starling", "House Sparrow", "Red-winged Blackbird",
    "Common Grackle", "Dark-eyed Junco", "Cedar Waxwing", "Eastern Bluebird", "Rock Pigeon",
    "Eurasian Collared-Dove", "Brown-headed Cowbird", "Red-tailed Hawk", "Cooper's Hawk", "Canada Goose",
    "Mallard", "Killdeer", "Great Blue Heron", "Belted Kingfisher", "Pileated Woodpecker", "Common Raven",
    "Fish Crow", "Great Horned Owl", "Barred Owl", "Eastern Screech-Owl", "Wild Turkey",
    "Anna's Hummingbird", "Western Scrub-Jay", "Steller's Jay", "Spotted Towhee", "California Towhee", "Bushtit",
    "Lesser Goldfinch", "Black Phoebe", "Bewick's Wren", "Oak Titmouse", "Chestnut-backed Chickadee",
    "Mountain Chickadee", "Acorn Woodpecker", "Nuttall's Woodpecker", "Brewer's Blackbird", "Black-billed Magpie",
    "California Quail", "Western Bluebird", "Band-tailed Pigeon", "Wrentit", "Say's Phoebe",
    "White-winged Dove", "Inca Dove", "Common Ground-Dove", "Gambel's Quail", "Gila Woodpecker",
    "Ladder-backed Woodpecker", "Verdin", "Cactus Wren", "Curve-billed Thrasher", "Pyrrhuloxia",
    "Great-tailed Grackle", "Great Kiskadee", "Black-crested Titmouse", "Canyon Towhee", "Abert's Towhee",
    "Brown-headed Nuthatch", "Red-headed Woodpecker", "Boat-tailed Grackle", "Monk Parakeet",
    "Gray Jay", "Boreal Chickadee",
    # (YARD_BIRDS ends here)
    # 2. common breeding migrants of woodland, edge and yards: the East and continent-wide, then the West
    "Red-eyed Vireo", "Chipping Sparrow", "Gray Catbird", "Common Yellowthroat", "Yellow Warbler", "House Wren",
    "Eastern Phoebe", "Eastern Wood-Pewee", "Great Crested Flycatcher", "Eastern Kingbird", "Tree Swallow",
    "Barn Swallow", "Chimney Swift", "Ruby-throated Hummingbird", "Indigo Bunting", "Baltimore Oriole",
    "Orchard Oriole", "Wood Thrush", "Veery", "Hermit Thrush", "Swainson's Thrush", "Ovenbird",
    "American Redstart", "Black-and-white Warbler", "Black-throated Green Warbler", "Chestnut-sided Warbler",
    "Yellow-rumped Warbler", "Pine Warbler", "Northern Parula", "Warbling Vireo", "White-eyed Vireo",
    "Yellow-throated Vireo", "Blue-headed Vireo", "Scarlet Tanager", "Summer Tanager", "Rose-breasted Grosbeak",
    "Blue-gray Gnatcatcher", "Brown Thrasher", "Eastern Towhee", "Field Sparrow", "Least Flycatcher",
    "Acadian Flycatcher", "Willow Flycatcher", "Yellow-billed Cuckoo", "Common Nighthawk",
    "Eastern Whip-poor-will", "Chuck-will's-widow", "Purple Martin", "Northern Rough-winged Swallow",
    "Cliff Swallow", "Broad-winged Hawk", "Red-shouldered Hawk", "American Kestrel", "Osprey", "Bald Eagle",
    "Turkey Vulture", "Green Heron", "Wood Duck", "Painted Bunting", "Yellow-breasted Chat",
    "Western Tanager", "Black-headed Grosbeak", "Bullock's Oriole", "Western Kingbird", "Western Wood-Pewee",
    "Violet-green Swallow", "Pacific-slope Flycatcher", "Ash-throated Flycatcher", "Lazuli Bunting",
    "Black-chinned Hummingbird", "Rufous Hummingbird", "Broad-tailed Hummingbird", "Allen's Hummingbird",
    "Costa's Hummingbird", "Orange-crowned Warbler", "Wilson's Warbler", "MacGillivray's Warbler",
    "Townsend's Warbler", "Black-throated Gray Warbler", "Cassin's Vireo", "Hutton's Vireo", "Plumbeous Vireo",
    "Hooded Oriole", "Vermilion Flycatcher", "Scissor-tailed Flycatcher", "Lucy's Warbler", "Phainopepla",
    # 3. winter visitors and passage migrants at feeders and in parks
    "White-throated Sparrow", "White-crowned Sparrow", "Golden-crowned Sparrow", "American Tree Sparrow",
    "Fox Sparrow", "Swamp Sparrow", "Lincoln's Sparrow", "Savannah Sparrow", "Golden-crowned Kinglet",
    "Ruby-crowned Kinglet", "Red-breasted Nuthatch", "Brown Creeper", "Winter Wren", "Yellow-bellied Sapsucker",
    "Red-naped Sapsucker", "Pine Siskin", "Purple Finch", "Cassin's Finch", "Red Crossbill", "Evening Grosbeak",
    "Common Redpoll", "Varied Thrush", "Townsend's Solitaire", "Ring-billed Gull", "American Coot",
    "Sharp-shinned Hawk", "Merlin", "Palm Warbler", "Magnolia Warbler", "Nashville Warbler", "Blackpoll Warbler",
    "Tennessee Warbler", "Bay-breasted Warbler", "Blackburnian Warbler", "Black-throated Blue Warbler",
    "Cape May Warbler", "Canada Warbler", "Mourning Warbler", "Philadelphia Vireo", "Olive-sided Flycatcher",
    "Alder Flycatcher", "Northern Waterthrush", "Louisiana Waterthrush", "Black-billed Cuckoo",
    # 4. birds of particular woodland, mountains and open country
    "Hooded Warbler", "Kentucky Warbler", "Prairie Warbler", "Yellow-throated Warbler", "Prothonotary Warbler",
    "Swainson's Warbler", "Dusky Flycatcher", "Hammond's Flycatcher", "Pygmy Nuthatch", "Canyon Wren",
    "Rock Wren", "Green-tailed Towhee", "Mountain Bluebird", "Western Screech-Owl", "Northern Saw-whet Owl",
    "Bridled Titmouse", "Ruffed Grouse", "Pine Grosbeak", "Bohemian Waxwing", "Common Loon", "American Woodcock",
    "Eastern Meadowlark", "Western Meadowlark", "Bobolink", "Horned Lark", "Vesper Sparrow", "Grasshopper Sparrow",
    "Lark Sparrow", "Dickcissel", "Blue Grosbeak", "Marsh Wren", "Sedge Wren", "Bank Swallow",
)

YARD_BIRDS = COMMON_NORTH_AMERICA[:COMMON_NORTH_AMERICA.index("Boreal Chickadee") + 1]   # group 1: kept with one run


@dataclass
class SpeciesChoice:
    labels: list[str]                                  # the label set, Puerto Rico first, then North America
    names: dict[str, str]                              # label → common name
    groups: dict[str, Counter]                         # label → groups per data set
    reasons: dict[str, str]                            # label → why it is in
    left_out: list[tuple[str, str]] = field(default_factory=list)   # (name, why) of candidates not taken


def choose_species(xc: Dataset, snippets: Dataset) -> SpeciesChoice:
    """The v3 rule (module docstring) applied to the two data sets (`load_dataset` of each)."""
    recs, labels, names = merge([xc, snippets])
    name = dict(zip(labels, names))
    groups: dict[str, Counter] = defaultdict(Counter)
    seen = set()
    for r in recs:
        if r.group not in seen:
            seen.add(r.group)
            groups[r.primary][r.group.split(":", 1)[0]] += 1
    xc_source = Path(xc.root).name
    chosen, reasons, left_out = [], {}, []
    for lab in sorted({r.primary for r in xc.recordings}):
        n = groups[lab][xc_source]
        if n >= PR_MIN_RECORDINGS or lab in FROGS:
            chosen.append(lab)
            reasons[lab] = (f"Puerto Rico: {n} xeno-canto recordings" if n >= PR_MIN_RECORDINGS
                            else f"Puerto Rican frog, kept with {n} recording{'s' * (n != 1)}")
    missing = sorted((set(FIRST_RELEASE) | set(FROGS)) - set(chosen))
    if missing:
        raise ValueError(f"species the default model must have are not in the data: {', '.join(missing)}")
    by_key = {name_key(nm): lab for lab, nm in name.items() if nm}
    n_na = 0
    for nm in COMMON_NORTH_AMERICA:
        candidate = by_key.get(name_key(nm))
        if candidate is None:
            left_out.append((nm, "not in the data"))
        elif candidate in reasons:
            reasons[candidate] += "; also a common North American bird"
        elif sum(groups[candidate].values()) < NA_MIN_GROUPS and nm not in YARD_BIRDS:
            left_out.append((nm, "only one recording run"))
        elif sum(groups[candidate].values()) < NA_MIN_GROUPS:
            chosen.append(candidate)
            reasons[candidate] = "North American yard bird, kept with one recording run (training only)"
        elif n_na >= NA_MAX:
            left_out.append((nm, f"beyond the first {NA_MAX}"))
        else:
            chosen.append(candidate)
            n_na += 1
            reasons[candidate] = "North America: " + ", ".join(
                f"{n} {'recording' if s == xc_source else 'run'}{'s' * (n != 1)} ({s})"
                for s, n in sorted(groups[candidate].items()))
    return SpeciesChoice(chosen, {lab: name.get(lab, "") for lab in chosen}, {lab: groups[lab] for lab in chosen},
                         reasons, left_out)


def report_md(choice: SpeciesChoice) -> str:
    pr = [lab for lab in choice.labels if choice.reasons[lab].startswith("Puerto Ric")]
    na = [lab for lab in choice.labels if lab not in pr]
    lines = [f"# Species v3: {len(choice.labels)} ({len(pr)} from the Puerto Rico set, {len(na)} North American)",
             "", "| label | common name | why |", "|---|---|---|"]
    lines += [f"| {lab} | {choice.names[lab]} | {choice.reasons[lab]} |" for lab in choice.labels]
    lines += ["", f"## Candidates left out ({len(choice.left_out)})", ""]
    lines += [f"- {nm}: {why}" for nm, why in choice.left_out]
    return "\n".join(lines) + "\n"


def split_table_md(recs: list[Recording], split: Split, names: dict[str, str], snippet_source: str) -> str:
    """Per species, recordings (xeno-canto) and recording runs (of the snippet set named `snippet_source`) in
    training, validation and test: the model card's table."""
    counts = split_counts(recs, split)
    head = ["species", "label"] + [f"{s} rec/runs" for s in SUBSETS]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(SUBSETS)]
    totals: dict[str, Counter[str]] = {s: Counter() for s in SUBSETS}

    def cell(c: dict) -> str:                              # xeno-canto recordings / snippet recording runs
        runs = c.get(snippet_source, 0)
        return f"{sum(c.values()) - runs} / {runs}"
    for lab, sub in sorted(counts.items(), key=lambda kv: (names.get(kv[0]) or kv[0]).lower()):
        lines.append(f"| {names.get(lab) or lab} | {lab} | " + " | ".join(cell(sub[s]) for s in SUBSETS) + " |")
        for s in SUBSETS:
            totals[s].update(sub[s])
    lines.append("| **all** | | " + " | ".join(cell(totals[s]) for s in SUBSETS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the default model's species list (v3); with --split, the "
                                             "model card's table of recordings per species and subset.")
    ap.add_argument("xeno_canto", help="the xc-puerto-rico folder")
    ap.add_argument("snippets", help="the essential-set folder")
    ap.add_argument("--out", help="species file to write, one label per line")
    ap.add_argument("--report", help="markdown: every species and why, and the candidates left out")
    ap.add_argument("--split", help="a run's split.json: write the table of this split (--table)")
    ap.add_argument("--species", help="species file of that run (default: the list chosen here)")
    ap.add_argument("--table", help="markdown table of recordings per species in train / val / test")
    a = ap.parse_args(argv)
    xc, snippets = load_dataset(a.xeno_canto), load_dataset(a.snippets)
    choice = choose_species(xc, snippets)
    if a.out:
        Path(a.out).write_text("\n".join(choice.labels) + "\n")
        print(f"{len(choice.labels)} species written to {a.out}")
    if a.report:
        Path(a.report).write_text(report_md(choice))
    if a.split and a.table:
        wanted = Path(a.species).read_text().split() if a.species else choice.labels
        recs, labels, names = select_species(*merge([load_dataset(a.xeno_canto), load_dataset(a.snippets)]), wanted)
        Path(a.table).write_text(split_table_md(recs, Split.load(a.split), dict(zip(labels, names)),
                                                Path(snippets.root).name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
