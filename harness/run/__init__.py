"""Running a grid: its cells (``grid``, ``gridfile``), what is already done and how long the rest takes
(``plan``), the scheduler and where cells run (``runner``, ``executors``), and one cell end to end (``worker``)."""
