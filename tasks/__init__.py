"""Training tasks built on dynnorm (repository-level, not installed): classification (Lightning) and
detection/segmentation (OpenMMLab), with the embedded synthetic dataset they share."""
