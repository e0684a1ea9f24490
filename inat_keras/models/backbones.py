"""The fine-tuning backbones as plain data: their architecture arguments and the units that freeze together.

It imports nothing, so that config validation can check `k` and the image size without loading keras-cv.
Units, bottom-up: `stage` units are the stem, each stage, and the top 1x1 conv (for EfficientNetV2-S,
torchvision's `features` children as the study froze them); `block` units are the blocks, with the top
conv trained together with the first block unfrozen and the stem last.
"""

from dataclasses import dataclass

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
# EfficientNet-Lite0 (EfficientNet-B0 without squeeze-and-excitation, ReLU6), per stage:
# (repeats, kernel, stride, expansion, output channels); stem 3x3/2 to 32 channels, top 1x1 conv to 1280.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
STEM, TOP = "stem", "top"
BACKBONE, PREPROCESS, HEAD = "backbone", "preprocess", "logits"  # layer names of every fine-tuning model
UNIT_TYPES = ("stage", "block")


@dataclass(frozen=True)
class Layout:
    name: str  # the config value
    title: str
    stage_repeats: tuple[int, ...]
    # The network downsamples by 32; keras.applications, the source of V2-S's ImageNet weights, refuses smaller
    # inputs (the backbones themselves compute at any size).
    min_image_size: int = 32

    @property
    def stages(self) -> list[str]:
        return [f"stage{s}" for s in range(1, len(self.stage_repeats) + 1)]

    @property
    def blocks(self) -> list[str]:
        """block1a, block1b, ...: the stage's number and the block's letter within it, as Keras names them."""
        return [f"block{stage}{chr(ord('a') + i)}" for stage, repeats in enumerate(self.stage_repeats, start=1)
                for i in range(repeats)]  # fmt: skip

    def units_bottom_up(self, unit: str) -> list[str]:
        return [STEM, *(self.stages if unit == "stage" else self.blocks), TOP]

    def max_k(self, unit: str) -> int:
        """How many units `last_k` can train: every stage unit; every block (the top conv comes with them)."""
        return len(self.units_bottom_up("stage")) if unit == "stage" else len(self.blocks)

    def describe_units(self, unit: str) -> str:
        if unit == "block":
            return f"{self.max_k(unit)} blocks"
        return f"{self.max_k(unit)} stage units: the stem, stages 1-{len(self.stage_repeats)}, the top conv"


BACKBONES = {
    "efficientnetv2_s": Layout("efficientnetv2_s", "EfficientNetV2-S", tuple(V2S_ARGUMENTS["stackwise_num_repeats"])),
    "efficientnet_lite0": Layout("efficientnet_lite0", "EfficientNet-Lite0", tuple(s[0] for s in LITE0_STAGES)),
}

# Why the demos fine-tune Lite0: said by `finetune --demo`, `study --demo` and the study's report.
DEMO_NOTE = ("the demo fine-tunes EfficientNet-Lite0 from its ImageNet weights, which install with the package: the "
             "study's EfficientNetV2-S needs its ImageNet weights from the internet (run without --demo for it)")


def demo_note(demo: bool, backbone: str) -> str | None:
    return DEMO_NOTE if demo and backbone == "efficientnet_lite0" else None
