"""The embedded default dataset: procedurally rendered faces with the 7 RAF-DB basic expressions.

Pipeline per image: sample an identity (face shape and proportions, skin tone over the full
range, hair, eye colour, facial hair, glasses) → neutral 68 points on a shallow 3D face
(:mod:`.face`) → expression as weighted action units (displacement fields on the 68 points:
brow raise/lower/knit, upper-lid raise, lid tightening, cheek raise, nose wrinkle, lip-corner
pull/depress, lip stretch/press, lips part, jaw drop) → yaw/pitch/roll and orthographic
projection → polygons drawn anti-aliased into the image and hard-edged into the parsing map
(:mod:`.render`) → ellipsoid Lambert shading + occlusion shading → background (plain, gradient,
clutter) → tint/exposure, defocus, sensor noise, JPEG. Packing and ground truth: :mod:`.archive`.

Ground-truth conventions and deviations from the real annotation schemes:

- 68 points follow iBUG 300-W order. Deviations: the jaw contour (0-16) is a fixed 3D curve on
  the face, not the silhouette, so under yaw the far-side contour is not re-fitted to the
  occluding edge; the brow points (17-26) lie on the upper third of the drawn brow band; eye
  corners/lids (36-47) are the drawn eye polygon exactly; points 60-67 are the drawn inner lip
  line (coincident-ish when the mouth is closed).
- 5 points (MTCNN order): image-left eye centre = mean of points 36-41, image-right eye centre =
  mean of 42-47 (the iris is drawn there, gaze jitter ≤ 0.02 face units), nose tip = point 30,
  mouth corners = points 48 and 54.
- Parsing map in LaPa order (0 background, 1 skin, 2 left brow, 3 right brow, 4 left eye,
  5 right eye, 6 nose, 7 upper lip, 8 inner mouth, 9 lower lip, 10 hair); "left"/"right" are as
  seen in the image, like the 5 points. Ears are skin; neck, clothes and glasses are not
  labelled (neck/clothes are background, glasses leave the label underneath); facial hair is
  labelled skin (it covers skin and stays out of the lips); teeth are inner mouth.
- The face box is the tight box of the face-skin polygon (jaw contour + hairline arc).

Determinism: every image's parameters come from ``SeedSequence([seed, difficulty, index])``; the
archive bytes do not depend on the worker count. Byte identity across machines additionally
assumes the same numpy/OpenCV/Pillow (libjpeg, zlib) builds, which ferpipe pins.
"""

from .archive import (
    FIXED_ZIP_DATE,
    GroundTruth,
    SynthResult,
    build_parser,
    load_ground_truth,
    main_synth,
    plan,
    read_labels,
    render_archive,
    synth_command,
    write_preview,
)
from .face import RAF_LABELS, five_from_68
from .render import DEFAULT, HARD, PARSING_CLASSES, STYLES, RenderStyle, render_face, sample_scene

__all__ = [
    "DEFAULT", "FIXED_ZIP_DATE", "GroundTruth", "HARD", "PARSING_CLASSES", "RAF_LABELS", "RenderStyle",
    "STYLES", "SynthResult", "build_parser", "five_from_68", "load_ground_truth", "main_synth", "plan",
    "read_labels", "render_archive", "render_face", "sample_scene", "synth_command", "write_preview",
]
