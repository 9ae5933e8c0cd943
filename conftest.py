"""Session-wide settings for pytest.

Quick mode makes every notebook a seconds-long smoke run; results of quick runs go to
runs/quick_results/ (never over the committed results/). The notebooks themselves are executed
by ``medgan reproduce --quick`` (tests/test_notebooks.py), which sets the mode of its kernels
explicitly and writes their results to its own scratch folder.
"""

import os

os.environ.setdefault("MEDGAN_QUICK", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
