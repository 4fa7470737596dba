"""spikecast.report"""
