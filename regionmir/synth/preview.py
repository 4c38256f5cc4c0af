"""The contact sheet of a freshly written phantom data set (``regionmir synth --preview``)."""

from __future__ import annotations

import io
import json

from .. import storage
from ..boxes import Box
from ..contact_sheet import contact_sheet, film_with_boxes
from ..image_reader import read_image

#: Regions outlined on the contact sheet (all 36 would hide the film).
PREVIEW_REGIONS = (
    "right lung",
    "left lung",
    "cardiac silhouette",
    "trachea",
    "left clavicle",
    "right costophrenic angle",
    "aortic arch",
    "left hemidiaphragm",
)


def write_preview(root: str, out: str | None = None, count: int = 12, width: int = 256) -> str:
    """Draw the first ``count`` films of ``root`` with a few boxes; returns where it wrote."""
    graphs = storage.glob(storage.join(root, "silver_dataset", "scene_graph", "*_SceneGraph.json"))[:count]
    pictures, captions = [], []
    for path in graphs:
        graph = json.loads(storage.read_text(path))
        image_path = storage.glob(storage.join(root, "images", "files", "*", "*", "*", f"{graph['image_id']}.*"))[0]
        film = read_image(image_path).pixels
        boxes = {
            o["bbox_name"]: Box(o["original_x1"], o["original_y1"], o["original_x2"], o["original_y2"])
            for o in graph["objects"]
            if o["bbox_name"] in PREVIEW_REGIONS
        }
        pictures.append(film_with_boxes(film, boxes, width=width))
        findings = [f["name"] for f in graph["phantom"]["params"]["findings"]]
        captions.append(f"{graph['viewpoint']} {graph['gender']}  {', '.join(findings) or 'no finding'}")
    sheet = contact_sheet(pictures, captions, columns=4, title=f"RegionMIR phantoms: {root}")
    target = out or storage.join(root, "preview.png")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    storage.write_bytes(target, buffer.getvalue())
    return target
