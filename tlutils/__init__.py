"""tlutils: the shared package behind the Transfer Learning Notebooks.

Start a notebook with ``cfg = tlutils.setup(PROFILE, SEED)``; see CONTRIBUTING.md for the modules.
"""

from tlutils.config import PROFILES, Setup, get_device, seed_everything, setup
from tlutils.results import record

__all__ = ["PROFILES", "Setup", "get_device", "record", "seed_everything", "setup"]
__version__ = "0.1.0"
