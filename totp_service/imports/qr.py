"""Read an otpauth URI from a QR code image (optional extra `qr`: zxing-cpp + Pillow)."""

from __future__ import annotations

from pathlib import Path


class QrError(Exception):
    pass


def read_qr_text(path: Path) -> str:
    try:
        import zxingcpp
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise QrError(
            "reading QR images needs the optional qr extra (zxing-cpp, Pillow): "
            "pip install '.[qr]' in a totp-service checkout"
        ) from None
    try:
        with Image.open(path) as image:
            image.load()
            results = zxingcpp.read_barcodes(image)
    except FileNotFoundError:
        raise QrError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError):
        raise QrError(f"{path} is not an image that can be read") from None
    texts = [r.text for r in results if r.text]
    if not texts:
        raise QrError(f"no QR code found in {path}")
    otpauth = [t for t in texts if t.lower().startswith("otpauth")]
    if not otpauth:
        raise QrError(f"the QR code in {path} does not hold an otpauth URI")
    return otpauth[0]
