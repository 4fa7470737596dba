"""spikecast.calibrate"""
