"""Air-quality categories for PM2.5, and optional humidity corrections for optical sensors.

Inputs are PM2.5 concentrations as integers in 0.1 ug/m3 (`pm25_dug`, as stored). Every index
function returns a plain tuple `(index, level, name)`: the index value (int), the category level
1..6 (1 = best; the same six colour bands in both indices) and the category name.

Both indices are piecewise linear (the EPA "AQI equation"):

    I = (I_hi - I_lo) / (C_hi - C_lo) * (C - C_lo) + I_lo,   rounded to the nearest integer,

computed here in exact integer arithmetic (round half up), so breakpoint edges never wobble.

Both indices are defined on 24-hour means; applied to one reading (as `fleet status` does for
the latest reading of each node) the category is indicative, not a regulatory figure.

Colombia — Indice de Calidad del Aire (ICA), Resolucion 2254 de 2017 (MinAmbiente), PM2.5,
24 h, whole ug/m3:  0-12 Buena (0-50), 13-37 Aceptable (51-100), 38-55 Danina a la salud de
grupos sensibles (101-150), 56-150 Danina a la salud (151-200), 151-250 Muy danina a la salud
(201-300), 251-500 Peligrosa (301-500).
  Source check: I could not retrieve the resolution's own table text through the search tool.
  The breakpoints are those of the project brief (DESIGN.md) and match the integer table that
  Colombian sources reproduce; the category names and colours match several independent
  implementations that cite the resolution (e.g. SIATA-derived scales: "Buena", "Aceptable",
  "Danina a la salud de grupos sensibles", "Danina a la salud", "Muy danina a la salud",
  "Peligrosa"; 0-50/51-100/101-150/151-200/201-300/301-500). One repository instead used
  EPA-style decimal bounds (12.0/12.1, 37.0/37.1, 55.4/55.5), which we do not follow.
  Truncation: the table's concentrations are whole ug/m3 with gaps between bands (12 | 13), so
  the concentration is truncated to a whole ug/m3 before the lookup (12.9 -> 12 -> Buena), in
  the same spirit as the EPA's "truncate to the table's precision" rule. This is our reading,
  flagged as such: the resolution's text should be checked before regulatory use.

US EPA AQI, PM2.5 breakpoints of the 2024 PM NAAQS revision (valid from May 6, 2024; EPA
Technical Assistance Document EPA-454/B-24-002, Table 6; AirNow "The AQI Equation (2024)"):
0.0-9.0 Good (0-50), 9.1-35.4 Moderate (51-100), 35.5-55.4 Unhealthy for Sensitive Groups
(101-150), 55.5-125.4 Unhealthy (151-200), 125.5-225.4 Very Unhealthy (201-300), 225.5-325.4
Hazardous (301-500). AirNow: "the calculated average concentrations are truncated to ... 0.1
ug/m3 for PM2.5 ... The resulting AQI is rounded to the nearest whole number", and "AQI values
above 500 are considered Beyond the AQI" — above 325.4 we extend the last segment's slope and
keep the Hazardous category (see `beyond_index`).
"""

# (C_lo, C_hi, I_lo, I_hi, level, name); ICA concentrations in whole ug/m3.
ICA_PM25 = (
    (0, 12, 0, 50, 1, "Buena"),
    (13, 37, 51, 100, 2, "Aceptable"),
    (38, 55, 101, 150, 3, "Dañina a la salud de grupos sensibles"),
    (56, 150, 151, 200, 4, "Dañina a la salud"),
    (151, 250, 201, 300, 5, "Muy dañina a la salud"),
    (251, 500, 301, 500, 6, "Peligrosa"),
)

# EPA concentrations in 0.1 ug/m3 (9.0 ug/m3 -> 90), the precision the AQI truncates to.
EPA_PM25 = (
    (0, 90, 0, 50, 1, "Good"),
    (91, 354, 51, 100, 2, "Moderate"),
    (355, 554, 101, 150, 3, "Unhealthy for Sensitive Groups"),
    (555, 1254, 151, 200, 4, "Unhealthy"),
    (1255, 2254, 201, 300, 5, "Very Unhealthy"),
    (2255, 3254, 301, 500, 6, "Hazardous"),
)

# Display colours per level (the standard six AQI colours; the ICA uses the same bands:
# verde, amarillo, naranja, rojo, purpura, marron).
LEVEL_COLOURS = {1: "green", 2: "yellow", 3: "orange", 4: "red", 5: "magenta", 6: "maroon"}

# The official RGB colours of the six levels (EPA AQI Technical Assistance Document, Table 2;
# the ICA's verde/amarillo/naranja/rojo/purpura/marron use the same values): maps and plots.
LEVEL_HEX = {1: "#00e400", 2: "#ffff00", 3: "#ff7e00", 4: "#ff0000", 5: "#8f3f97", 6: "#7e0023"}

SCHEMES = ("ica", "epa")


def categories(scheme):
    """Return [(level, name, lowest concentration in ug/m3)] of `scheme` ('ica' | 'epa')."""
    if scheme == "ica":
        return [(r[4], r[5], r[0]) for r in ICA_PM25]
    if scheme == "epa":
        return [(r[4], r[5], r[0] / 10) for r in EPA_PM25]
    raise ValueError(f"unknown air-quality index {scheme!r}; expected one of {', '.join(SCHEMES)}")


def _interpolate(table, c):
    """Return (index, level, name) for concentration `c` (in the table's unit) under `table`."""
    segment = table[-1]  # above the table: beyond the index, the last slope is extended
    for seg in table:   # (EPA: "Beyond the AQI"; the ICA likewise has nothing above 500)
        if c <= seg[1]:
            segment = seg
            break
    c_lo, c_hi, i_lo, i_hi, level, name = segment
    num = (i_hi - i_lo) * (c - c_lo)
    den = c_hi - c_lo
    index = i_lo + (2 * num + den) // (2 * den)  # round half up, exactly
    return index, level, name


def _check(pm25_dug):
    if isinstance(pm25_dug, bool) or not isinstance(pm25_dug, (int, float)):
        raise TypeError(f"pm25_dug must be a number in 0.1 ug/m3, got {pm25_dug!r}")
    if pm25_dug < 0:
        raise ValueError(f"pm25_dug must be >= 0, got {pm25_dug}")
    return int(pm25_dug)  # truncation to 0.1 ug/m3 for float inputs (EPA rule)


def ica_pm25(pm25_dug):
    """Colombia's ICA for PM2.5 (Resolucion 2254 de 2017) of `pm25_dug` (0.1 ug/m3 units).

    Returns (index, level 1..6, category name). Truncates to whole ug/m3 first. Raises
    ValueError for negative input, TypeError for non-numbers."""
    return _interpolate(ICA_PM25, _check(pm25_dug) // 10)


def epa_aqi_pm25(pm25_dug):
    """US EPA AQI for PM2.5 (2024 breakpoints) of `pm25_dug` (0.1 ug/m3 units).

    Returns (index, level 1..6, category name); the index exceeds 500 beyond the AQI."""
    return _interpolate(EPA_PM25, _check(pm25_dug))


def beyond_index(scheme, pm25_dug):
    """True when `pm25_dug` lies above the highest breakpoint of `scheme` ('ica' or 'epa')."""
    top = ICA_PM25[-1][1] * 10 + 9 if scheme == "ica" else EPA_PM25[-1][1]
    return _check(pm25_dug) > top


def index_pm25(scheme, pm25_dug):
    """Dispatch to `ica_pm25` or `epa_aqi_pm25` by scheme name; None in -> None out."""
    if pm25_dug is None:
        return None
    if scheme == "ica":
        return ica_pm25(pm25_dug)
    if scheme == "epa":
        return epa_aqi_pm25(pm25_dug)
    raise ValueError(f"unknown air-quality index {scheme!r}; expected one of {', '.join(SCHEMES)}")


# ---------------------------------------------------------------------------------------------
# Humidity corrections. Optical (light-scattering) sensors count particles that have taken up
# water, so they read high in humid air (notably above ~75 % RH). Both functions take and return
# 0.1 ug/m3 integers and RH in %.

CORRECTIONS = ("none", "epa2021", "kappa")


def epa2021_correction(pm25_dug, rh_pct):
    """US-wide correction for PurpleAir (Plantower PMS5003) PM2.5, Barkjohn, Gantt & Clements,
    "Development and application of a United States-wide correction for PM2.5 data collected
    with the PurpleAir sensor", Atmos. Meas. Tech. 14, 4617-4637 (2021), doi:10.5194/amt-14-4617-2021:

        PM2.5 = 0.524 * PA_cf1 - 0.0862 * RH + 5.75      (ug/m3; RH in %)

    derived for the sensor's CF=1 output at ambient (not smoke-extreme) concentrations; EPA's
    later extension for smoke events changes the slope only well above 50 ug/m3. Returns the
    corrected value in 0.1 ug/m3, never below 0."""
    pm = _check(pm25_dug) / 10.0
    corrected = 0.524 * pm - 0.0862 * float(rh_pct) + 5.75
    return max(0, int(round(corrected * 10)))


def kappa_correction(pm25_dug, rh_pct, kappa=0.3, rh_max_pct=95.0):
    """Hygroscopic-growth correction from kappa-Koehler theory (Petters & Kreidenweis, Atmos.
    Chem. Phys. 7, 1961-1971, 2007): a particle's wet/dry volume ratio is
    1 + kappa * a_w / (1 - a_w) with water activity a_w ~ RH/100 (Kelvin term neglected), so the
    dry PM is the reading divided by that factor. Crilley et al. (Atmos. Meas. Tech. 11, 709,
    2018) apply this form to low-cost optical sensors. kappa ~ 0.3 is typical of continental
    aerosol; fit it against the reference network where one is collocated. RH is capped at
    `rh_max_pct` because the factor diverges at saturation (the sensor is unreliable in fog).
    Returns the corrected value in 0.1 ug/m3."""
    pm = _check(pm25_dug)
    a_w = min(max(float(rh_pct), 0.0), rh_max_pct) / 100.0
    growth = 1.0 + kappa * a_w / (1.0 - a_w)
    return int(round(pm / growth))


def correct_pm25(method, pm25_dug, rh_pct):
    """Apply the humidity correction `method` ('none', 'epa2021', 'kappa') to `pm25_dug`.

    Returns 0.1 ug/m3; None when pm25_dug is None; the reading unchanged when RH is unknown."""
    if pm25_dug is None:
        return None
    if method == "none" or rh_pct is None:
        return pm25_dug
    if method == "epa2021":
        return epa2021_correction(pm25_dug, rh_pct)
    if method == "kappa":
        return kappa_correction(pm25_dug, rh_pct)
    raise ValueError(f"unknown humidity correction {method!r}; expected one of {', '.join(CORRECTIONS)}")
