"""The DICOM node: SCP, store, case assembly, workers, export, scheduler and the CLI wiring."""
