"""Hardware-target checks (spikecast.targets): Speck's layer pattern, core memories and mapping."""

from __future__ import annotations

import torch
from torch import nn

from spikecast.cli import main
from spikecast.inspection import inspect
from spikecast.targets import SPECK, XYLO_AUDIO2


def test_digits_cnn_on_speck_layer_by_layer():
    report = inspect("zoo:digits-cnn", target="speck").target
    assert [layer.path for layer in report.layers] == ["features.0", "features.3", "classifier.1", "classifier.3"]
    conv2, fc1 = report.layers[1], report.layers[2]
    # sinabs' memory_summary: c * 2^(ceil log2(k*k) + ceil log2 f), f * 2^(ceil log2 h + ceil log2 w)
    assert (conv2.kernel_memory, conv2.neuron_memory, conv2.bias_memory, conv2.pooling) == (16 * 16 * 32, 32 * 64, 32, 2)
    assert fc1.kernel == (4, 4) and fc1.input_shape == (32, 4, 4) and fc1.kernel_memory == 32 * 16 * 64
    assert fc1.fits_cores == [3, 4, 5, 6]  # only the cores with >= 32K kernel memory
    assert all(layer.fits for layer in report.layers[:3])
    assert not report.layers[3].fits and "no neurons" in report.layers[3].problems[0]
    assert any("analog" in p for p in report.problems) and not report.fits


def test_a_small_spiking_chain_fits():
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 10), nn.ReLU())
    report = inspect(net, input_shape=(2, 16, 16), encoding="poisson", target="speck").target
    assert report.fits and not report.problems
    assert sorted(layer.core for layer in report.layers) == sorted(set(layer.core for layer in report.layers))


def test_resnet20_does_not_fit_and_says_why():
    report = inspect("zoo:cifar10-resnet20", target="speck").target
    assert len(report.layers) == 20 and not report.fits
    assert any("residual sum" in p and p.startswith("layer1.0") for p in report.problems)
    assert any("20 layers for 9 cores" in p for p in report.problems)
    assert sum(layer.core is not None for layer in report.layers) == len(SPECK.cores)
    big = [layer for layer in report.layers if layer.path == "layer3.1.conv1"][0]
    assert big.kernel_memory == 64 * 1024 and big.fits_cores == [5, 6]


def test_cli_inspect_target(capsys):
    code = main(["inspect", "zoo:digits-cnn", "--target", "speck", "--text"])
    out = capsys.readouterr().out
    assert code == 1 and "Target speck: does NOT fit (3 of 4 layers placed)" in out
    assert main(["inspect", "zoo:digits-cnn", "--target", "xylo-audio2", "--text"]) == 1
    assert "input channels 64 / 16, hidden neurons 3,136 / 1,000" in capsys.readouterr().out
    assert main(["inspect", "zoo:digits-cnn", "--target", "loihi"]) == 2
    assert "invalid choice: 'loihi'" in capsys.readouterr().err


def test_a_small_network_fits_xylo_as_dense_matrices():
    # a conv unrolled to one neuron per channel and position; the pooling folds into the next matrix
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 8),
                        nn.ReLU())
    report = inspect(net, input_shape=(1, 4, 4), encoding="poisson", target="xylo-audio2").target
    assert report.fits and not report.problems
    conv, fc = report.layers
    assert (conv.neurons, conv.dense_weights, conv.role) == (64, 16 * 64, "hidden")
    assert (fc.neurons, fc.dense_weights, fc.pooling, fc.role) == (8, 64 * 8, None, "output") and conv.pooling == 2
    assert "input channels 16 / 16, hidden neurons 64 / 1,000, output neurons 8 / 8" in report.table()


def test_xylo_limits_by_module_path():
    wide = nn.Sequential(nn.Linear(17, XYLO_AUDIO2.hidden_neurons - 10), nn.ReLU(), nn.Linear(990, 20), nn.ReLU(),
                         nn.Linear(20, 9), nn.ReLU())
    report = inspect(wide, input_shape=(17,), encoding="poisson", target="xylo-audio2").target
    assert not report.fits
    assert "0: reads 17 input channels; xylo-audio2 has 16" in report.problems
    assert report.layers[0].role == "hidden" and report.layers[0].fits
    assert "hidden neurons used up (1,010 needed so far, 1,000 on the chip)" in report.layers[1].problems
    assert report.layers[2].problems == ["9 output neurons; xylo-audio2 has 8"]
    assert inspect(wide, input_shape=(17,), encoding="poisson", target="xylo-imu").target.layers[2].role == "output"


def test_resnet20_on_xylo_skips_are_weights_but_it_is_far_too_big():
    report = inspect("zoo:cifar10-resnet20", target="xylo-imu").target
    # residual sums and the option-A shortcut are linear: extra weight matrices, not problems
    assert not any("shortcut" in p or "residual" in p for p in report.problems)
    assert sum(layer.skips for layer in report.layers) == 9
    assert report.layers[0].neurons == 16 * 32 * 32 and not report.layers[0].fits
    assert any("3,072 input channels" in p for p in report.problems) and any("analog" in p for p in report.problems)
