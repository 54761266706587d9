"""Image decoding shared by training, evaluation and embedding.

Every path into the model goes through `to_rgb`, so a transparent PNG looks the same to the
model whether it arrives from a shard, a file or an HTTP request.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif", "bmp")
# PIL's names for the formats above: what the server accepts (sniffed from the bytes, never trusted
# from a file name or a Content-Type header).
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})
MAX_PIXELS = 64_000_000  # refuse decompression bombs before decoding


class ImageDecodeError(ValueError):
    """An input that is not a decodable image; the message says which and why."""


class ImageFormatError(ImageDecodeError):
    """A real image in a format that is not accepted (e.g. TIFF when only IMAGE_FORMATS are)."""


class ImageTooLargeError(ImageDecodeError):
    """An image whose header declares more pixels than allowed; refused before decoding."""


BACKGROUND = (255, 255, 255)  # what transparent pixels become, on every path into a model


def transparency_policy(background: tuple[int, int, int] = BACKGROUND) -> str:
    """How `to_rgb` treats transparency, in words (what a collection records of its inputs)."""
    return f"alpha composited onto RGB {background[0]},{background[1]},{background[2]}"


def to_rgb(img: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto `background`, not dropped to black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def decode_image(
    data: bytes, *, name: str = "image", max_pixels: int = MAX_PIXELS, formats: frozenset[str] | None = None
) -> Image.Image:
    """Bytes -> RGB PIL image, fully loaded. Raises ImageDecodeError (or its subclasses
    ImageFormatError / ImageTooLargeError) naming `name`. `formats` restricts the accepted PIL
    formats; None accepts whatever PIL can read."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        if formats is not None and img.format not in formats:
            raise ImageFormatError(
                f"{name}: {img.format} images are not accepted; "
                f"send one of {', '.join(sorted(f.lower() for f in formats))}"
            )
        w, h = img.size
        if w * h > max_pixels:
            raise ImageTooLargeError(
                f"{name}: {w}x{h} pixels exceeds the limit of {max_pixels}; downscale it before sending"
            )
        img.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:  # PIL's own guard, for sizes far over any sane cap
        raise ImageTooLargeError(
            f"{name}: its header declares a huge size (PIL: {e}); the limit here is {max_pixels} pixels"
        ) from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(
            f"{name}: not a decodable image (the bytes are not in any image format known here)"
        ) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"{name}: not a decodable image ({e})") from e
    return to_rgb(img)


def load_image(source: str | Path | bytes | Image.Image, *, name: str | None = None) -> Image.Image:
    """Path, bytes or PIL image -> RGB PIL image."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(bytes(source), name=name or "image bytes")
    if isinstance(source, (str, Path)):
        p = Path(source).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"image file not found: {p}")
        return decode_image(p.read_bytes(), name=name or str(p))
    raise TypeError(f"unsupported image input {type(source).__name__}; give a path, bytes or a PIL image")
