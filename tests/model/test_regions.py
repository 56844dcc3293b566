"""--region, --lat/--lon and --species-list: which species' events a user's place and list keep."""
import logging

import pytest

from birdlive.errors import OptionError
from birdlive.model.config import ModelConfig
from birdlive.model.regions import allowed_species, read_species_list, region_at

CFG = ModelConfig(labels=["Coereba_flaveola", "Eleutherodactylus_coqui", "Zenaida_macroura", "american_robin",
                          "dark_eyed_junco"],
                  names=["Bananaquit", "Coqui", "Mourning Dove", "American Robin", "Dark-eyed Junco"],
                  extra={"regions": {"puerto-rico": ["Coereba_flaveola", "Eleutherodactylus_coqui",
                                                     "Zenaida_macroura"],
                                     "north-america": ["Zenaida_macroura", "american_robin", "dark_eyed_junco"]}})


@pytest.mark.parametrize("lat, lon, region", [(18.22, -66.59, "puerto-rico"),      # Utuado
                                              (18.15, -65.44, "puerto-rico"),      # Vieques
                                              (47.61, -122.33, "north-america"),   # Seattle
                                              (32.22, -110.97, "north-america"),   # Tucson
                                              (40.44, -79.99, "north-america")])   # Pittsburgh
def test_coordinates_map_to_regions(lat, lon, region):
    assert region_at(lat, lon) == region


@pytest.mark.parametrize("lat, lon, says", [(52.5, 13.4, "outside the regions"), (95, 0, "not a place")])
def test_coordinates_outside_every_region_are_one_error(lat, lon, says):
    with pytest.raises(OptionError, match=says):
        region_at(lat, lon)


def test_a_north_american_user_never_hears_a_puerto_rican_frog():
    na = allowed_species(CFG, lat=47.61, lon=-122.33)
    assert "Eleutherodactylus_coqui" not in na and "Coereba_flaveola" not in na
    assert set(na) == {"Zenaida_macroura", "american_robin", "dark_eyed_junco"}
    assert set(allowed_species(CFG, region="puerto-rico")) == {"Coereba_flaveola", "Eleutherodactylus_coqui",
                                                               "Zenaida_macroura"}
    assert allowed_species(CFG) == ()                       # nothing given: every species


def test_species_list_takes_labels_names_and_birdnet_lines(tmp_path, caplog):
    path = tmp_path / "species.txt"
    path.write_text("# my yard\nTurdus migratorius_American Robin\nDark-eyed Junco\nZenaida_macroura  # doves\n"
                    "Passer domesticus_House Sparrow\n\n")
    with caplog.at_level(logging.WARNING):
        assert read_species_list(path, CFG) == ["american_robin", "dark_eyed_junco", "Zenaida_macroura"]
    assert "1 of its species are not known" in caplog.text and "House Sparrow" in caplog.text
    assert allowed_species(CFG, region="puerto-rico", species_list=path) == ("Zenaida_macroura",)


@pytest.mark.parametrize("kwargs, says", [
    (dict(lat=18.2), "go together"),
    (dict(region="puerto-rico", lat=18.2, lon=-66.5), "give one"),
    (dict(region="europe"), "this model knows"),
    (dict(species_list="/nonexistent/list.txt"), "cannot read"),
])
def test_bad_place_or_list_is_one_error(kwargs, says):
    with pytest.raises(OptionError, match=says):
        allowed_species(CFG, **kwargs)


def test_a_list_of_unknown_birds_is_an_error(tmp_path):
    path = tmp_path / "europe.txt"
    path.write_text("Erithacus rubecula_European Robin\n")
    with pytest.raises(OptionError, match="names none"):
        read_species_list(path, CFG)


def test_a_checkpoint_without_a_region_table_says_how_to_make_one():
    with pytest.raises(OptionError, match="train.regions"):
        allowed_species(ModelConfig(labels=["a"]), region="north-america")


def test_the_default_model_knows_where_its_species_live():
    from birdlive.model import DEFAULT_CHECKPOINT, load_config
    cfg = load_config(DEFAULT_CHECKPOINT)
    seattle = set(allowed_species(cfg, lat=47.61, lon=-122.33))
    assert {"american_robin", "song_sparrow"} <= seattle
    assert not {"Eleutherodactylus_coqui", "Melopyrrha_portoricensis", "Setophaga_adelaidae"} & seattle
    assert "Melopyrrha_portoricensis" in allowed_species(cfg, lat=18.22, lon=-66.59)


def test_replay_keeps_the_events_of_the_users_region(tmp_path):
    """The demo recording is Puerto Rican: at home its Adelaide's Warbler (a Puerto Rican endemic, behind the
    bullfinch) is found; told the microphone is in Seattle, birdlive reports none of its Puerto Rican birds (and
    still runs to the end)."""
    from tests.common import ROOT, birdlive, read_events_csv
    demo = ROOT / "recordings" / "XC737279.mp3"
    at_home, in_seattle = tmp_path / "pr.csv", tmp_path / "wa.csv"
    r = birdlive("replay", demo, "--no-live", "--csv", at_home, "--region", "puerto-rico")
    assert r.returncode == 0, r.stderr
    assert "Setophaga_adelaidae" in {row["species"] for row in read_events_csv(at_home)}
    r = birdlive("replay", demo, "--no-live", "--csv", in_seattle, "--lat", "47.61", "--lon", "-122.33")
    assert r.returncode == 0, r.stderr
    assert not {row["species"] for row in read_events_csv(in_seattle)} & {"Melopyrrha_portoricensis",
                                                                          "Setophaga_adelaidae"}
    r = birdlive("replay", demo, "--no-live", "--lat", "52.5", "--lon", "13.4")
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
