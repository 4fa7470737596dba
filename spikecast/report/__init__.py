"""Reports: accuracy vs latency, latency to parity, per-layer activity, synaptic operations, energy."""

from spikecast.report.activity import ActivityReport, EnergyModel, measure_activity
from spikecast.report.report import Report, build_report, write_report

__all__ = ["Report", "build_report", "write_report", "measure_activity", "ActivityReport", "EnergyModel"]
