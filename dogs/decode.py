"""Decode one image file to pixels: RGB uint8, size x size, upright, as DECODE describes (the image cache's key)."""
import numpy as np
from PIL import Image, ImageFile, ImageOps

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error (skipped and reported), not grey pixels

# How load_rgb turns a file into pixels. The decoded-image cache hashes this description (with Pillow's
# version) into its key: change a value here, or what load_rgb does with it, and every cache is rebuilt.
DECODE = {
    "output": "RGB uint8, size x size (aspect not kept)",
    "draft": "JPEG decoded at the smallest libjpeg scale that is still >= size",
    "exif_orientation": "applied (ImageOps.exif_transpose) when the EXIF can be read: phone photos stand upright",
    "alpha": (255, 255, 255),  # RGBA, LA, PA and transparent palette images are composited on this background
    "high_bit_depth": "I;16*: x255/65535; I and F: 0..1 floats x255, else 0..255 kept, else 0..65535 "
                      "x255/65535, else x255/max; then grey to RGB",
    "cmyk": "Pillow's CMYK -> RGB",
    "resample": "BILINEAR",
    "reducing_gap": 3.0,
    "truncated": "error",
}


def _to_8bit(img):
    """An image of more than 8 bits per sample (I;16*, I, F) as 8-bit grey, scaled as DECODE says."""
    a = np.nan_to_num(np.asarray(img, dtype=np.float64))
    top = a.max(initial=0)
    if img.mode.startswith("I;16"):
        scale = 65535
    elif img.mode == "F" and top <= 1:
        scale = 1
    else:
        scale = 255 if top <= 255 else 65535 if top <= 65535 else top
    return Image.fromarray(np.clip(np.rint(a * (255 / scale)), 0, 255).astype(np.uint8))  # 2-D uint8: L


def _orientation(img):
    """The EXIF orientation tag, or None when there is none or the EXIF block cannot be parsed."""
    try:
        return img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block does not make the pixels unreadable: keep them as stored
        return None


def load_rgb(path, size):
    """Decode one image as DECODE describes to an RGB uint8 array of shape (size, size, 3); raises on a corrupt file."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: let libjpeg decode at a reduced scale when the target is small
        if DECODE["exif_orientation"] and _orientation(img) not in (None, 1):
            img = ImageOps.exif_transpose(img)  # orientation 6/8: the way a photo viewer shows it
        if img.mode.startswith("I") or img.mode == "F":
            img = _to_8bit(img)  # 16-bit and float samples: scaled, not clipped at 255
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (*DECODE["alpha"], 255))
            img = Image.alpha_composite(background, img)  # transparent pixels become white, not black
        img = img.convert("RGB").resize((size, size), Image.Resampling[DECODE["resample"]],
                                        reducing_gap=DECODE["reducing_gap"])
        return np.asarray(img, dtype=np.uint8)
