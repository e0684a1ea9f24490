"""One decoder for every path that reads an image (scan, training, evaluation, predict): any JPEG, PNG,
GIF, BMP or WebP to RGB (or gray), turned upright by its EXIF orientation, transparent pixels composited
over one fixed background, resized by squashing to a square.

Transparent and semi-transparent pixels (RGBA, LA) are composited over BACKGROUND, the ImageNet mean
colour, which the models' normalisation maps to zero: a cut-out shows the same neutral background
whatever colours its invisible pixels held. JPEGs are decoded at the reduced ratio their size allows.
An image whose header declares more than MAX_PIXELS pixels is refused from its header, before any pixel is decoded.
"""

from __future__ import annotations

import re
import warnings

import tensorflow as tf
from PIL import Image

JPEG_RATIOS = (1, 2, 4, 8)  # the scalings libjpeg decodes to directly
BACKGROUND = (124, 116, 104)  # RGB: the ImageNet mean colour
EXIF_ORIENTATION = 0x0112
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# The most pixels an image may declare: Pillow's default MAX_IMAGE_PIXELS (2**30 // 4 // 3, 89.5 megapixels), past
# which Pillow warns of a decompression bomb (and refuses at twice as many). Decoded, such an image is 256 MiB of
# RGB and TensorFlow's float resize needs 1 GiB more, several at once in the parallel decode; an 80-megapixel
# camera's photos still fit. A header claiming more (a few hundred KB can claim 20000x20000) is skipped, named.
MAX_PIXELS = 89_478_485
# Every image past Pillow's warning limit is refused here with its reason: Pillow's warning would only repeat it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageTooLarge(ValueError):
    """The header declares more than MAX_PIXELS pixels."""


def exif_orientation(path: str) -> int:
    """The EXIF orientation tag (1-8; 1 = upright, also for files without EXIF), read from the header, which must
    declare at most MAX_PIXELS pixels (else ImageTooLarge)."""
    try:
        with Image.open(path) as image:
            pixels, shown = image.width * image.height, f" ({image.width}x{image.height})"
            value = image.getexif().get(EXIF_ORIENTATION, 1) if pixels <= MAX_PIXELS else 1
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # Pillow stops past its own limit
        count = re.search(r"\((\d+) pixels\)", str(err))
        pixels, shown = int(count.group(1)) if count else MAX_PIXELS + 1, ""
    if pixels > MAX_PIXELS:
        raise ImageTooLarge(f"image too large: its header declares {pixels:,} pixels{shown}, more than the "
                            f"{MAX_PIXELS:,} an image may have; shrink it")  # fmt: skip
    return int(value) if value in range(1, 9) else 1


def jpeg_ratio_index(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Index into JPEG_RATIOS of the largest ratio that still decodes both sides to >= image_size.

    Decoding at 1/r costs about 1/r^2 of a full decode; the antialiased resize that follows sees
    nearly the same picture (libjpeg's scaled IDCT averages the pixels it drops).
    """
    height, width = tf.unstack(tf.image.extract_jpeg_shape(contents)[:2])
    short = tf.minimum(height, width)
    return tf.add_n([tf.cast(short // r >= image_size, tf.int32) for r in JPEG_RATIOS[1:]])


def composite(colour: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """Colour pixels over BACKGROUND by their alpha (uint8 in, uint8 out)."""
    a = tf.cast(alpha, tf.float32) / 255.0
    mixed = tf.cast(colour, tf.float32) * a + tf.constant(BACKGROUND, tf.float32) * (1.0 - a)
    return tf.cast(tf.round(mixed), tf.uint8)


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels to 3."""
    def gray():
        return tf.image.grayscale_to_rgb(image[..., :1])

    def gray_alpha():
        return composite(tf.image.grayscale_to_rgb(image[..., :1]), image[..., 1:2])

    def rgba():
        return composite(image[..., :3], image[..., 3:4])

    branches = [gray, gray_alpha, lambda: image[..., :3], rgba]
    return tf.switch_case(tf.shape(image)[-1] - 1, branches)


def transposed(image: tf.Tensor) -> tf.Tensor:
    """Rows and columns swapped, each RGB pixel carried as one int32 (with a zero byte). oneDNN, on by default on
    AVX-512 machines, takes no uint8 transpose and says so on stderr in the middle of training; TensorFlow moves a
    plain cast to int32 back past the transpose, a bitcast it cannot."""
    packed = tf.bitcast(tf.concat([image, tf.zeros_like(image[..., :1])], axis=-1), tf.int32)
    return tf.bitcast(tf.transpose(packed), tf.uint8)[..., :3]


def upright(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Apply an EXIF orientation (1-8) as PIL's ImageOps.exif_transpose does."""
    branches = [
        lambda: image,  # 1
        lambda: tf.reverse(image, [1]),  # 2: mirrored left-right
        lambda: tf.reverse(image, [0, 1]),  # 3: turned 180 degrees
        lambda: tf.reverse(image, [0]),  # 4: mirrored top-bottom
        lambda: transposed(image),  # 5
        lambda: tf.reverse(transposed(image), [1]),  # 6: turned 90 degrees clockwise to stand upright
        lambda: tf.reverse(transposed(image), [0, 1]),  # 7
        lambda: tf.reverse(transposed(image), [0]),  # 8: turned 90 degrees counter-clockwise
    ]
    return tf.switch_case(tf.clip_by_value(tf.cast(orientation, tf.int32), 1, 8) - 1, branches)


def decode_rgb(contents: tf.Tensor, image_size: int, orientation=1) -> tf.Tensor:
    """Any supported file's bytes to upright RGB uint8; JPEGs at the reduced ratio their size allows."""

    def jpeg():
        branches = [lambda r=r: tf.io.decode_jpeg(contents, channels=3, ratio=r) for r in JPEG_RATIOS]
        return tf.switch_case(jpeg_ratio_index(contents, image_size), branches)

    def other():
        return to_rgb(tf.io.decode_image(contents, channels=0, expand_animations=False))

    image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    image.set_shape([None, None, 3])
    image = upright(image, orientation)
    image.set_shape([None, None, 3])
    return image


def decode_resize(path: tf.Tensor, image_size: int, channels: int, orientation=1) -> tf.Tensor:
    """A file -> upright RGB or gray, squashed to image_size, uint8."""
    return squashed(decode_rgb(tf.io.read_file(path), image_size, orientation), image_size, channels)


def squashed(image: tf.Tensor, image_size: int, channels: int) -> tf.Tensor:
    """Upright RGB uint8 -> gray if asked, resized (antialiased) to a square of image_size, uint8."""
    if channels == 1:
        image = tf.image.rgb_to_grayscale(image)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def unreadable_reason(path: str) -> str | None:
    """Why the pipeline's decoder or the EXIF reader cannot use a file, in one line; None when both can. The header
    is read first: an image too large is refused before its pixels are decoded."""
    try:
        exif_orientation(path)
    except ImageTooLarge as err:
        return str(err)
    except (OSError, ValueError, SyntaxError):
        pass  # the decoder below names what is wrong more precisely
    try:
        image = decode_rgb(tf.io.read_file(path), 1)
        if image.shape[0] < 1 or image.shape[1] < 1:
            return "empty image"
        exif_orientation(path)
        return None
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError) as err:
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:.*$", "", err.message.splitlines()[0])
        return message.strip()[:200]
    except (OSError, ValueError, SyntaxError) as err:  # PIL cannot read a header that TensorFlow decoded
        return f"unreadable header: {err}"[:200]

