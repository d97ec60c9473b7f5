"""The science of contourqa, importable without the daemon: DICOM to volumes and masks, screens, reports."""
