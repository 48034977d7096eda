"""arena_kd.planner — `arena-kd plan`: time and memory of every stage on named hardware, before anything runs.

Modules: ``specs`` (hardware and model constants, each with its source), ``lengths`` (token counts of the data),
``cost`` (the cost model), ``calibration`` (measured GPU results, ``calibration_data/``), ``plan`` (verdict + report).
"""
