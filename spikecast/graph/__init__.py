"""spikecast.graph"""
