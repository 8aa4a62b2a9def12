"""TBKIN: threshold-based knowledge integration network."""
__version__ = "0.1.0"
