"""spikecast.quant"""
