"""datasets/telephoto.py: a scene cropped around the image centres keeps its poses; its GT cameras follow the crop."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datasets"))
import synthetic  # noqa: E402
import telephoto  # noqa: E402


def test_crop_and_scale_move_the_gt_cameras_with_the_pixels(tmp_path):
    src = tmp_path / "src"
    synthetic.generate(src, synthetic.SceneConfig(num_images=3, width=320, height=240, focal=280,
                                                  principal_offset=(6.0, -4.0), seed=1))
    out = tmp_path / "tele"
    assert telephoto.telephoto(src, out, crop=0.5, scale=1.5) == 3
    old, new = pycolmap.Reconstruction(str(src / "gt")), pycolmap.Reconstruction(str(out / "gt"))
    by_name = {im.name: im for im in new.images.values()}
    for im in old.images.values():
        tele = by_name[Path(im.name).with_suffix(".png").as_posix()]
        assert np.allclose(tele.cam_from_world().matrix(), im.cam_from_world().matrix())  # same poses
        cam, tcam = old.cameras[im.camera_id], new.cameras[tele.camera_id]
        assert (tcam.width, tcam.height) == (240, 180)  # round(320 * 0.5 * 1.5), round(240 * 0.5 * 1.5)
        assert tcam.mean_focal_length() == pytest.approx(1.5 * cam.mean_focal_length())
        # a point seen in the source image lands where the crop (offset 80, 60) and the scale put its pixel
        x = np.array([[200.0, 100.0], [130.5, 150.25]])
        rays = cam.cam_from_img(x)
        assert np.allclose(tcam.img_from_cam(np.c_[rays, np.ones(len(rays))]), (x - (80, 60)) * 1.5)
        assert Image.open(out / "images" / tele.name).size == (240, 180)
    with pytest.raises(ValueError, match="crop"):
        telephoto.telephoto(src, tmp_path / "bad", crop=1.5)
