"""The result store and what makes a result trustworthy read back: records and the calibration-set cache
(``records``), their declared shapes (``schema``), atomic writes (``io``), the code and machine that made a
result (``code_version``, ``machine``), and the cache folder (``paths``)."""
