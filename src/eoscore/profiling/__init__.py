"""What exactly-once costs: ``eoscore profile`` (measured) and ``eoscore capacity`` (estimated)."""

from eoscore.profiling.capacity import CapacityInputs, CodecMeasurement, estimate, measure_codec
from eoscore.profiling.profile import ProfilePoint, format_table, plot, run_profile

__all__ = [
    "CapacityInputs",
    "CodecMeasurement",
    "ProfilePoint",
    "estimate",
    "format_table",
    "measure_codec",
    "plot",
    "run_profile",
]
