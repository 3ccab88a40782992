"""Clip-level stage on an extract's faces: descriptors (aggregate), corpus labels, classifiers."""
