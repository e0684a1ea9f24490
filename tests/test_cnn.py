import pytest

from inat_keras.models.cnn import CnnArchitecture, build_cnn, check_geometry, closed_form_params, min_image_size, model_flops
from inat_keras.config import ConfigError, ScratchConfig, build_config


def make(**values):
    return build_config(ScratchConfig, values)


def test_default_cnn_matches_the_study_counts():
    config = make()
    model = build_cnn(CnnArchitecture.of(config), 10)
    assert model.count_params() == 3_448_842
    assert model_flops(model) == pytest.approx(1.302e9, rel=1e-3)
    assert closed_form_params(CnnArchitecture.of(config), 10) != model.count_params()  # an approximation, shown beside it


@pytest.mark.parametrize(
    "values",
    [
        {"filters": "equal32", "kernel_sizes": "decreasing", "activation": "mish", "batch_norm": True},
        {"filters": "doubling16", "kernel_sizes": "constant5", "dropout": 0.3, "image_size": 160},
        {"filters": "halving256", "kernel_sizes": "increasing", "activation": "parametric_relu", "image_size": 150},
        {"filters": [3, 5, 7, 9, 11], "kernel_sizes": [1, 1, 1, 1, 1], "image_size": 32, "channels": 1},
    ],
)
def test_hand_count_equals_keras_count(values):
    config = make(**values)
    model = build_cnn(CnnArchitecture.of(config), 7)
    size, channels, expected = config.image_size, config.channels, 0
    for filters, k in zip(config.filter_list(), config.kernel_list()):
        expected += (k * k * channels + 1) * filters + (4 * filters if config.batch_norm else 0)
        if config.activation == "parametric_relu":
            expected += filters
        channels, size = filters, (size - k + 1) // 2
    dense = config.dense_units
    expected += (size * size * channels + 1) * dense + (4 * dense if config.batch_norm else 0)
    expected += dense if config.activation == "parametric_relu" else 0
    expected += (dense + 1) * 7
    assert model.count_params() == expected
    assert model.output_shape == (None, 7)


def test_block_order_is_conv_bn_act_dropout_pool():
    model = build_cnn(CnnArchitecture.of(make(batch_norm=True, dropout=0.2)), 10)
    names = [layer.name for layer in model.layers if layer.name.startswith("block1")]
    assert names == ["block1_conv", "block1_bn", "block1_act", "block1_dropout", "block1_pool"]
    assert model.get_layer("block1_conv").padding == "valid"


def test_too_small_image_is_refused_with_the_smallest_size():
    kernels = [5, 5, 3, 3, 1]
    smallest = min_image_size(kernels)
    check_geometry(smallest, kernels)
    with pytest.raises(ConfigError, match=f"smallest image size that works is {smallest}"):
        check_geometry(smallest - 1, kernels)
    with pytest.raises(ConfigError, match="too small"):
        build_cnn(CnnArchitecture.of(make(image_size=64)), 10)
