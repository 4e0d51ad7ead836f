"""The result store and what makes a result trustworthy read back: every key a cell is filed under (``keys``),
records and their validation (``records``), the calibration-set cache (``calibration_cache``), their declared
shapes (``schema``), atomic writes (``io``), the code, machine and environment that made a result
(``code_version``, ``machine``, ``provenance``), and the cache folder (``paths``)."""
