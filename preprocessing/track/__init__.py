"""The built-in FLAME tracker: a subject's frames -> metrical-tracker-format ``.frame`` files.

``observe`` (face-mesh landmarks and irises) -> ``fit`` (landmark fit of all frames at once) ->
``photometric`` (optional refinement through the Gaussian rasterizer) -> ``run`` (the pipeline, resume,
writing); ``evaluate`` scores a tracking against known truth, ``viz`` draws the overlay video.
``python -m preprocessing.track --idname me`` runs it (docs/custom_video.md, docs/maths.md section 11).
"""
