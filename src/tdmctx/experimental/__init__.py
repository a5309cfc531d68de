"""Experimental data: DM readers, the labelled Ti-WSe2 fields, column refinement."""

from tdmctx.experimental.columns import (
    check_points,
    column_intensities,
    hollow_level,
    hollow_sites,
    refine_columns,
)
from tdmctx.experimental.dm import DMReadError, read_dm
from tdmctx.experimental.ti_wse2 import FIELDS, LABEL_IDS, load_ti_wse2

__all__ = [
    "DMReadError",
    "FIELDS",
    "LABEL_IDS",
    "check_points",
    "column_intensities",
    "hollow_level",
    "hollow_sites",
    "load_ti_wse2",
    "read_dm",
    "refine_columns",
]
