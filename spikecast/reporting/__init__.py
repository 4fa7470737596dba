"""Reports: accuracy vs latency, latency to parity, per-layer activity, synaptic operations, energy."""

from spikecast.reporting.activity import ActivityReport, EnergyModel, measure_activity
from spikecast.reporting.report import Report, build_report, write_report

__all__ = ["Report", "build_report", "write_report", "measure_activity", "ActivityReport", "EnergyModel"]
