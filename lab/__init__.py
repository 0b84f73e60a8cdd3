"""lab: research tooling, not the hospital runtime.

The synthetic cohort generator (:mod:`lab.synth`), the Ki-67 model's training
(:mod:`lab.model`), the segmentation network's training
(:mod:`lab.segmentation`) and the paper-style evaluation and growth analysis
(:mod:`lab.evaluation`). ``lab`` may import ``ai_core``; ``ai_core``,
``dicom_out`` and the serving daemon never import ``lab`` (the ``ki67node``
research subcommands reach it from inside their command functions).
"""
