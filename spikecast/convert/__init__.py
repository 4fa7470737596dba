"""spikecast.convert"""
