"""Session-wide settings for pytest, including the notebooks nbval executes.

Quick mode makes every notebook a seconds-long smoke run; results of quick runs go to
runs/quick_results/ (never over the committed results/).
"""

import os

os.environ.setdefault("MEDGAN_QUICK", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
