"""The preprocessing stages: media I/O, frame sampling, faces, depth maps, embeddings.

Importing the package registers every face detector: dlib in `faces`, the neural ones in `detectors`."""

from . import detectors, faces  # noqa: F401
