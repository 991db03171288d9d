"""A telephoto version of a scene with GT: every image cropped around its centre, then resized.

A crop keeps the focal length in pixels and shrinks the image, so the focal length grows against the
image size: without EXIF, the database stage's guess (1.2 x the larger side) falls far short of it,
as for photos taken with a long lens. The poses are those of the source scene; the GT cameras are
cropped and scaled with the images (COLMAP convention: pixel centres at +0.5, so a crop offset of
x0 px moves the principal point by -x0 and a scale s multiplies focal lengths and principal points).

    python datasets/telephoto.py --scene ../shared/data/dtu-scan24 --crop 0.375 --out outputs/tele/dtu
    python datasets/telephoto.py --scene ../shared/data/herzjesu-P8 --crop 0.2 --scale 2.5 --out ...

Writes OUT/images (PNG, the source names with .png) and OUT/gt (COLMAP text model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def telephoto(scene: Path, out: Path, crop: float, scale: float = 1.0) -> int:
    """Write the cropped (``crop``: kept fraction of each side, centred) and resized (``scale``) images and GT of
    ``scene`` (``images/`` and ``gt/``) to ``out``; returns the number of images."""
    import pycolmap

    if not 0.0 < crop <= 1.0 or scale <= 0:
        raise ValueError(f"crop must be in (0, 1] and scale > 0, got {crop}, {scale}")
    rec = pycolmap.Reconstruction(str(scene / "gt"))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    for cam in rec.cameras.values():  # any COLMAP model: the crop moves the principal point, rescale scales
        w, h = round(cam.width * crop), round(cam.height * crop)
        cam.principal_point_x -= (cam.width - w) // 2
        cam.principal_point_y -= (cam.height - h) // 2
        cam.width, cam.height = w, h
        cam.rescale(round(w * scale), round(h * scale))  # focal lengths and principal point by new / old size
    names = {}
    for image in rec.images.values():
        src = rec.cameras[image.camera_id]
        names[image.image_id] = Path(image.name).with_suffix(".png").as_posix()
        photo = Image.open(scene / "images" / image.name).convert("RGB")
        w, h = round(photo.width * crop), round(photo.height * crop)
        x0, y0 = (photo.width - w) // 2, (photo.height - h) // 2
        photo.crop((x0, y0, x0 + w, y0 + h)).resize((src.width, src.height), Image.LANCZOS).save(
            out / "images" / names[image.image_id])
    for image_id, name in names.items():
        rec.image(image_id).name = name
    rec.write_text(str(out / "gt"))
    return len(names)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path, required=True, help="a scene folder with images/ and gt/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--crop", type=float, required=True, help="kept fraction of each image side, centred")
    ap.add_argument("--scale", type=float, default=1.0, help="resize factor after the crop")
    args = ap.parse_args(argv)
    print(f"{telephoto(args.scene, args.out, args.crop, args.scale)} images written to {args.out}")


if __name__ == "__main__":
    main()
