"""Occluded evaluation sets: the procedural ``synthetic-occlusion`` test set and the real
occlusion / pose subsets (RAN's lists) of an ingested test split.

Public API::

    from ferpipe.occlusion import OcclusionParams, occlude, OCCLUDERS, register_occluder
    from ferpipe.occlusion import synthetic_occlusion_stage, plan_occlusion, occlusion_job,
                                   gallery_markdown, backend_recompute
    from ferpipe.occlusion import parse_subset_list, resolve_subset, build_subsets
    from ferpipe.occlusion.stage import OCCLUSION, OcclusionStage
"""

from ferpipe._lazy import lazy_exports

# Loaded on first use: importing ferpipe.occlusion.params must not import torch or OpenCV.
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "occluders": ["OCCLUDERS", "composite", "draw_occluder", "register_occluder"],
    "params": ["ALL_OCCLUDERS", "OcclusionParams", "SubsetListParams"],
    "synthetic": ["SET_NAME", "BackendRecompute", "OcclusionReport", "backend_recompute", "gallery_markdown",
                  "occlude", "occlusion_job", "plan_occlusion", "read_metadata",
                  "sample_seed", "synthetic_occlusion_stage"],
})
