"""spikecast.runtime"""
