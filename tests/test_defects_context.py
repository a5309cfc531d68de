"""Context validation, the 96-system catalog and the six imaging conditions."""

from __future__ import annotations

import pytest

from tdmctx.defects.catalog import COMMON_DOPANTS, HOSTS, catalog, get_host, get_system
from tdmctx.defects.conditions import focal_spread_A, get_condition, imaging_conditions
from tdmctx.defects.context import CLASS_IDS, CLASS_NAMES, CONTEXT_FIELDS, Context, element_symbol


def test_class_order_is_fixed():
    assert CLASS_NAMES == ("metal", "dopant", "X2", "V1", "V2")
    assert [CLASS_IDS[c] for c in CLASS_NAMES] == [0, 1, 2, 3, 4]


def test_context_normalises_symbols_and_exposes_Z():
    ctx = Context(host_metal="w", chalcogen="se", dopant=22, energy_eV=80e3, detector_inner_mrad=35, detector_outer_mrad=80)
    assert (ctx.host_metal, ctx.chalcogen, ctx.dopant) == ("W", "Se", "Ti")
    assert (ctx.host_metal_Z, ctx.chalcogen_Z, ctx.dopant_Z) == (74, 34, 22)
    assert ctx.host == "WSe2" and ctx.is_complete


def test_unknown_fields_stay_none():
    ctx = Context(host_metal="W", chalcogen="Se")
    assert ctx.dopant is None and ctx.energy_eV is None and ctx.dopant_Z is None
    assert not ctx.is_complete
    masked = Context(host_metal="W", chalcogen="Se", dopant="Ti", energy_eV=80e3).masked("energy_eV", "dopant")
    assert masked.energy_eV is None and masked.dopant is None and masked.host_metal == "W"


def test_round_trip_through_dict_with_table_style_missing_values():
    ctx = Context(host_metal="Mo", chalcogen="S", dopant="Re", energy_eV=60e3, detector_inner_mrad=70, detector_outer_mrad=200)
    assert Context.from_dict(ctx.to_dict()) == ctx
    assert Context.from_dict({"dopant": "", "energy_eV": float("nan")}) == Context()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"host_metal": "Xx"}, "host_metal='Xx'"),
        ({"dopant": "Unobtainium"}, "dopant='Unobtainium'"),
        ({"chalcogen": "O"}, "chalcogen='O'"),
        ({"host_metal": "W", "dopant": "W"}, "dopant='W'"),
        ({"energy_eV": 80.0}, "energy_eV=80.0"),
        ({"energy_eV": 1e6}, "energy_eV=1000000.0"),
        ({"detector_inner_mrad": 80, "detector_outer_mrad": 80}, "detector_inner_mrad=80"),
        ({"detector_inner_mrad": 100, "detector_outer_mrad": 40}, "detector_inner_mrad=100"),
        ({"detector_inner_mrad": -1}, "detector_inner_mrad=-1"),
        ({"detector_outer_mrad": 5000}, "detector_outer_mrad=5000"),
    ],
)
def test_context_rejects_bad_values_naming_them(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        Context(**kwargs)


def test_from_dict_and_masked_reject_unknown_fields():
    with pytest.raises(ValueError, match="unknown context field"):
        Context.from_dict({"voltage": 80})
    with pytest.raises(ValueError, match="cannot mask"):
        Context().masked("voltage")


def test_element_symbol_rejects_bool_and_bad_numbers():
    with pytest.raises(ValueError):
        element_symbol(True)
    with pytest.raises(ValueError, match="atomic number"):
        element_symbol(0)


def test_catalog_has_96_systems_24_per_host_and_never_the_host_metal():
    systems = catalog()
    assert len(systems) == 96
    assert len({s.name for s in systems}) == 96
    for host in HOSTS:
        dopants = [s.dopant for s in systems if s.host == host]
        assert len(dopants) == 24
        assert host.metal not in dopants
        other = "W" if host.metal == "Mo" else "Mo"
        assert other in dopants
        assert set(COMMON_DOPANTS) <= set(dopants)
    assert get_system("WSe2:Ti").dopant_Z == 22
    assert get_system("MoS2", "w").dopant == "W"


def test_host_geometry_matches_literature_monolayers():
    # Monolayer S-S / Se-Se thickness ~3.1-3.4 A, lattice constants 3.15-3.29 A.
    for host in HOSTS:
        assert 3.1 < host.a_A < 3.3
        assert 3.1 < host.thickness_A < 3.4
        assert "19" in host.source  # every host cites a publication year
    assert get_host("WSe2").thickness_A == pytest.approx(2 * (0.75 - 0.621) * 12.96)
    assert get_host("MoSe2").thickness_A > get_host("MoS2").thickness_A


def test_catalog_lookups_fail_clearly():
    with pytest.raises(ValueError, match="host='TiO2'"):
        get_host("TiO2")
    with pytest.raises(ValueError, match="dopant='Mo' is not catalogued for host MoS2"):
        get_system("MoS2:Mo")
    with pytest.raises(ValueError, match="HOST:DOPANT"):
        get_system("WSe2")


def test_six_conditions_with_80kV_and_576_distinct_contexts():
    conditions = imaging_conditions()
    assert len(conditions) == 6
    assert {c.energy_eV for c in conditions} == {60e3, 80e3, 200e3}
    assert {c.detector for c in conditions} == {"HAADF", "MAADF"}
    for c in conditions:
        # dark-field detectors sit outside the bright-field disk
        assert c.detector_inner_mrad > c.probe.semiangle_mrad
    contexts = {c.context(s) for s in catalog() for c in conditions}
    assert len(contexts) == 576
    assert all(ctx.is_complete for ctx in contexts)
    assert get_condition("80kV-MAADF").context().host_metal is None
    with pytest.raises(ValueError, match="condition='90kV-HAADF'"):
        get_condition("90kV-HAADF")


def test_focal_spread_follows_cc_dE_over_E():
    assert focal_spread_A(80e3) == pytest.approx(1.4e7 * 0.35 / 2.3548 / 80e3)
    assert focal_spread_A(60e3) > focal_spread_A(200e3)
    with pytest.raises(ValueError, match="energy_eV"):
        focal_spread_A(0)
