"""Running a grid: its cells (``grid``, ``gridfile``), what is already done and how long the rest takes
(``plan``), the scheduler and where cells run (``runner``, ``executors``), one cell end to end (``worker``, with
``memory`` and ``peak_memory``), and the leaderboard label a cell's record carries (``labels``)."""
