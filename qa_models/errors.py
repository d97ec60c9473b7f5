"""The one hierarchy of errors a user can cause; the CLI turns them into exit status 2."""


class ContourQAError(Exception):
    """Base of every error contourqa reports to a user as one line."""


class InputError(ContourQAError):
    """The input is not what contourqa can read (not DICOM, unsupported SOP class, bad argument)."""


class GeometryError(ContourQAError):
    """The input is DICOM but its geometry is inconsistent (gaps, duplicates, mixed orientation)."""


class ReferenceMismatchError(ContourQAError):
    """A structure set and an image series do not belong together (frame of reference, missing images)."""
