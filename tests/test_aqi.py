"""Air-quality indices: every breakpoint edge of Colombia's ICA and the 2024 US EPA AQI for
PM2.5, rounding and truncation, beyond-the-index values, and the humidity corrections."""
import pytest

from fleet import aqi

ICA_NAMES = [seg[5] for seg in aqi.ICA_PM25]
EPA_NAMES = [seg[5] for seg in aqi.EPA_PM25]


# (pm25 in 0.1 ug/m3, index, level)
ICA_EDGES = [
    (0, 0, 1),
    (129, 50, 1),      # 12.9 ug/m3 truncates to 12: still Buena
    (130, 51, 2),      # 13
    (379, 100, 2),     # 37.9 -> 37
    (380, 101, 3),     # 38
    (559, 150, 3),     # 55.9 -> 55
    (560, 151, 4),     # 56
    (1509, 200, 4),    # 150.9 -> 150
    (1510, 201, 5),    # 151
    (2509, 300, 5),    # 250.9 -> 250
    (2510, 301, 6),    # 251
    (5000, 500, 6),    # 500: top of the table
]

EPA_EDGES = [
    (0, 0, 1),
    (90, 50, 1),       # 9.0
    (91, 51, 2),       # 9.1
    (354, 100, 2),     # 35.4
    (355, 101, 3),     # 35.5
    (554, 150, 3),     # 55.4
    (555, 151, 4),     # 55.5
    (1254, 200, 4),    # 125.4
    (1255, 201, 5),    # 125.5
    (2254, 300, 5),    # 225.4
    (2255, 301, 6),    # 225.5
    (3254, 500, 6),    # 325.4: top of the table
]


@pytest.mark.parametrize("pm25_dug,index,level", ICA_EDGES)
def test_ica_breakpoint_edges(pm25_dug, index, level):
    assert aqi.ica_pm25(pm25_dug) == (index, level, ICA_NAMES[level - 1])


@pytest.mark.parametrize("pm25_dug,index,level", EPA_EDGES)
def test_epa_breakpoint_edges(pm25_dug, index, level):
    assert aqi.epa_aqi_pm25(pm25_dug) == (index, level, EPA_NAMES[level - 1])


def test_category_names_match_the_standards():
    assert ICA_NAMES == [
        "Buena", "Aceptable", "Dañina a la salud de grupos sensibles", "Dañina a la salud",
        "Muy dañina a la salud", "Peligrosa",
    ]
    assert EPA_NAMES == ["Good", "Moderate", "Unhealthy for Sensitive Groups", "Unhealthy", "Very Unhealthy",
                         "Hazardous"]


def test_interpolation_rounds_half_up():
    # ICA 25 ug/m3: 51 + 49 * (25 - 13) / 24 = 75.5 -> 76 (round half up, not to even)
    assert aqi.ica_pm25(250)[0] == 76
    # EPA 35.0 ug/m3: 51 + 49 * (35.0 - 9.1) / 26.3 = 99.25 -> 99
    assert aqi.epa_aqi_pm25(350)[0] == 99
    # EPA 20.0: 51 + 49 * 10.9 / 26.3 = 71.31 -> 71
    assert aqi.epa_aqi_pm25(200)[0] == 71


def test_index_is_monotonic_over_the_whole_range():
    for fn in (aqi.ica_pm25, aqi.epa_aqi_pm25):
        prev = (-1, 0)
        for c in range(0, 6000):
            index, level, _ = fn(c)
            assert index >= prev[0] and level >= prev[1], (fn.__name__, c)
            prev = (index, level)


def test_float_input_truncates_to_the_table_precision():
    assert aqi.epa_aqi_pm25(90.9) == aqi.epa_aqi_pm25(90)   # 9.09 ug/m3 -> 9.0 -> Good
    assert aqi.ica_pm25(129.99)[1] == 1


def test_beyond_the_index_extends_the_last_segment():
    # EPA above 325.4 ug/m3: "Beyond the AQI", still Hazardous, index keeps growing
    index, level, name = aqi.epa_aqi_pm25(5000)
    assert level == 6 and name == "Hazardous" and index > 500
    assert aqi.beyond_index("epa", 3255) and not aqi.beyond_index("epa", 3254)
    index, level, _ = aqi.ica_pm25(6000)
    assert level == 6 and index > 500
    assert aqi.beyond_index("ica", 5010) and not aqi.beyond_index("ica", 5009)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        aqi.ica_pm25(-1)
    with pytest.raises(TypeError):
        aqi.epa_aqi_pm25("12")
    with pytest.raises(TypeError):
        aqi.epa_aqi_pm25(True)
    with pytest.raises(ValueError):
        aqi.index_pm25("aqhi", 10)
    assert aqi.index_pm25("ica", None) is None
    assert aqi.index_pm25("epa", 91) == aqi.epa_aqi_pm25(91)


def test_epa2021_correction_formula():
    # 0.524 * 10.0 - 0.0862 * 50 + 5.75 = 6.68 ug/m3
    assert aqi.epa2021_correction(100, 50) == 67
    # 0.524 * 100 - 0.0862 * 90 + 5.75 = 50.39
    assert aqi.epa2021_correction(1000, 90) == 504
    # never negative
    assert aqi.epa2021_correction(0, 100) == 0


def test_kappa_correction_lowers_readings_more_in_humid_air():
    assert aqi.kappa_correction(1000, 0) == 1000
    assert aqi.kappa_correction(1000, 50) == 769   # growth 1 + 0.3 * 0.5 / 0.5 = 1.3
    assert aqi.kappa_correction(1000, 100) == aqi.kappa_correction(1000, 95)  # capped, no division by 0
    values = [aqi.kappa_correction(1000, rh) for rh in range(0, 101, 5)]
    assert values == sorted(values, reverse=True)


def test_correct_pm25_dispatch():
    assert aqi.correct_pm25("none", 123, 90) == 123
    assert aqi.correct_pm25("epa2021", 123, None) == 123   # unknown RH: unchanged
    assert aqi.correct_pm25("kappa", None, 50) is None
    assert aqi.correct_pm25("epa2021", 100, 50) == 67
    with pytest.raises(ValueError):
        aqi.correct_pm25("magic", 100, 50)
