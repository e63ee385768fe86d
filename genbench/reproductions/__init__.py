"""Reproductions of published tables: ``genbench reproduce NAME --schedule smoke|short|full``.

Adding one: a new file here whose ``run(context)`` is decorated with
:func:`~genbench.reproductions.common.register_reproduction`, and one import line below.
"""

# Importing a reproduction file registers it.
from genbench.reproductions import iwae_table1, wu2017_table2  # noqa: F401
from genbench.reproductions.common import (
    REPRODUCTIONS,
    SCHEDULES,
    Reproduction,
    ReproductionReport,
    Row,
    run_reproduction,
)

__all__ = ["REPRODUCTIONS", "SCHEDULES", "Reproduction", "ReproductionReport", "Row", "run_reproduction"]
