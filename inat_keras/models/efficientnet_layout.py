"""EfficientNetV2-S as plain data: keras-cv's constructor arguments and the units that fine-tuning freezes.

It imports nothing, so that config validation can check `k` and the image size without loading keras-cv.
Units, bottom-up: `stage` units are torchvision's `features` children as the study froze them (the stem,
the six stages, the top 1x1 conv); `block` units are keras-cv's 40 sub-blocks, with the top conv trained
together with the first block unfrozen and the stem last.
"""

V2S_ARGUMENTS = {  # keras-cv's EfficientNetV2Backbone arguments for the S variant (the preset's, offline)
    "width_coefficient": 1.0,
    "depth_coefficient": 1.0,
    "stackwise_kernel_sizes": [3, 3, 3, 3, 3, 3],
    "stackwise_num_repeats": [2, 4, 4, 6, 9, 15],
    "stackwise_input_filters": [24, 24, 48, 64, 128, 160],
    "stackwise_output_filters": [24, 48, 64, 128, 160, 256],
    "stackwise_expansion_ratios": [1, 4, 4, 4, 6, 6],
    "stackwise_squeeze_and_excite_ratios": [0.0, 0.0, 0.0, 0.25, 0.25, 0.25],
    "stackwise_strides": [1, 2, 2, 2, 1, 2],
    "stackwise_conv_types": ["fused", "fused", "fused", "unfused", "unfused", "unfused"],
}
# The network downsamples by 32, and keras.applications, the source of its ImageNet weights, refuses
# smaller inputs (keras-cv's backbone itself computes at any size).
MIN_IMAGE_SIZE = 32
STEM, TOP = "stem", "top"
STAGES = [f"stage{s}" for s in range(1, len(V2S_ARGUMENTS["stackwise_num_repeats"]) + 1)]
BLOCKS = [
    f"block{stage}{chr(ord('a') + i)}"
    for stage, repeats in enumerate(V2S_ARGUMENTS["stackwise_num_repeats"], start=1)
    for i in range(repeats)
]
UNIT_TYPES = ("stage", "block")
UNITS_BOTTOM_UP = {"stage": [STEM, *STAGES, TOP], "block": [STEM, *BLOCKS, TOP]}


def max_k(unit: str) -> int:
    """How many units `last_k` can train: every stage unit; every block (the top conv comes with them)."""
    return len(UNITS_BOTTOM_UP["stage"]) if unit == "stage" else len(BLOCKS)
