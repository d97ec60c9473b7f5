"""contourqa: quality checks of automatically generated contours, as a DICOM node."""

__version__ = "0.1.0"
NAME = "contourqa"
