"""An offline depth signal for face crops: MediaPipe's 468-point 3D face mesh, rendered as a depth map.

Used when Depth Anything V2 weights cannot be downloaded. MediaPipe's face landmark network
(`face_landmark.tflite`, run with ai-edge-litert) predicts x, y and a relative depth z for the 468
vertices of a fixed face topology; rasterising that topology's triangles with per-vertex depth gives a
dense map in Depth Anything's convention: near is bright, min-max normalised per crop over the face.
Both files come from the mediapipe wheel as assets (see `megatron_utils.core.assets`).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from ai_edge_litert.interpreter import Interpreter

from ..core.assets import ASSETS, describe, fetch
from ..core.threads import per_thread

MODEL_ASSET = "facemesh_landmarks"
TOPOLOGY_ASSET = "facemesh_connections"
INPUT_SIZE = 192  # the network's square input side
FAR = 0.1  # value of the farthest face pixel: the silhouette stays apart from the 0 background, also in uint8


class FaceMesh(NamedTuple):
    """The network's outputs for N crops of side S.

    points: float32 [N, 468, 3]; x, y in crop pixels (0..S, pixel i spans [i, i + 1)), z in the same
        pixel scale, MediaPipe's sign: relative to the head's centre, smaller (negative) = nearer.
    score: float32 [N], the face-presence probability (sigmoid of the network's face flag).
    """

    points: np.ndarray
    score: np.ndarray


def mesh_triangles(path: str | Path) -> np.ndarray:
    """int32 [T, 3] triangles of FACEMESH_TESSELATION, read from face_mesh_connections.py as data.

    The source lists each triangle as its three edges in turn, (a, b), (b, c), (c, a); the frozenset
    it builds loses that order, so the literal is parsed instead of imported.
    """
    tree = ast.parse(Path(path).read_text())
    literal = next(node.value.args[0] for node in tree.body if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", None) == "FACEMESH_TESSELATION")
    edges = np.array(ast.literal_eval(literal), np.int32).reshape(-1, 3, 2)
    if not (edges[:, :, 1] == np.roll(edges[:, :, 0], -1, axis=1)).all():
        raise ValueError(f"{path}: FACEMESH_TESSELATION is not a list of edge triples")
    return edges[:, :, 0]


def hole_loops(triangles: np.ndarray) -> list[np.ndarray]:
    """The mesh's inner boundary loops (the eyes and the mouth), as ordered vertex indices.

    A boundary edge belongs to one triangle only; following them gives closed loops, of which the
    longest is the face outline and the others are holes that would read as background.
    """
    directed = triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    _, inverse, counts = np.unique(np.sort(directed, axis=1), axis=0, return_inverse=True,
                                   return_counts=True)
    following = dict(directed[counts[inverse.ravel()] == 1].tolist())
    loops, seen = [], set()
    for start in following:
        if start in seen:
            continue
        loop = [start]
        while (vertex := following[loop[-1]]) != start:
            loop.append(vertex)
        seen.update(loop)
        loops.append(np.array(loop))
    return sorted(loops, key=len)[:-1]


def rasterise(vertices: np.ndarray, triangles: np.ndarray, size: int) -> np.ndarray:
    """float32 [size, size]: the largest value (nearness) of the triangles covering each pixel centre,
    barycentrically interpolated; -inf where no triangle covers it.

    vertices: [V, 3] of x, y in map pixels and the value to interpolate. All triangles' bounding-box
    pixels are tested at once, then a max-scatter is the z-buffer.
    """
    corners = vertices[triangles].astype(np.float64)  # [T, 3 corners, 3]
    origin, edge1, edge2 = corners[:, 0], corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
    area = edge1[:, 0] * edge2[:, 1] - edge1[:, 1] * edge2[:, 0]
    # first and last pixel centres (i + 0.5) inside each bounding box, clipped to the map
    low = np.clip(np.ceil(corners[..., :2].min(1) - 0.5), 0, size).astype(np.int64)
    high = np.clip(np.floor(corners[..., :2].max(1) - 0.5), -1, size - 1).astype(np.int64)
    span = np.maximum(high - low + 1, 0)
    count = np.where(np.abs(area) > 1e-9, span[:, 0] * span[:, 1], 0)
    tri = np.repeat(np.arange(len(corners)), count)
    offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    x = low[tri, 0] + offset % span[tri, 0]
    y = low[tri, 1] + offset // span[tri, 0]
    dx, dy = x + 0.5 - origin[tri, 0], y + 0.5 - origin[tri, 1]
    u = (dx * edge2[tri, 1] - dy * edge2[tri, 0]) / area[tri]  # weight of corner 1
    v = (edge1[tri, 0] * dy - edge1[tri, 1] * dx) / area[tri]  # weight of corner 2
    inside = (u >= -1e-6) & (v >= -1e-6) & (u + v <= 1 + 1e-6)  # shared edges: no pixel gaps
    value = origin[tri, 2] + u * edge1[tri, 2] + v * edge2[tri, 2]
    depth = np.full(size * size, -np.inf, np.float32)
    np.maximum.at(depth, y[inside] * size + x[inside], value[inside].astype(np.float32))
    return depth.reshape(size, size)


class FaceMeshDepth:
    """Face crops in, depth maps out: uint8 [N, S, S, 3] RGB -> float32 [N, output_size, output_size].

    Crops are the faces stage's (square, face centred, side 1.3 x the dlib box); no rotation or
    re-centring is done, so strongly tilted faces get a poorer mesh (and a lower score).
    """

    def __init__(self, output_size: int = 128):
        if output_size < 1:
            raise ValueError(f"output_size must be >= 1, got {output_size}")
        self.output_size = output_size
        self.weights = f"MediaPipe face mesh {describe(MODEL_ASSET)}"
        self.fingerprint = f"sha256:{ASSETS[MODEL_ASSET].sha256}"  # fetch() verified the file against it
        triangles = mesh_triangles(fetch(TOPOLOGY_ASSET))
        self._holes = hole_loops(triangles)
        # each hole is closed by a fan around an extra vertex at its loop's mean, appended after the 468
        self._vertex_count = vertex_count = int(triangles.max()) + 1
        fans = [np.stack([np.full(len(loop), vertex_count + k), loop, np.roll(loop, -1)], axis=1)
                for k, loop in enumerate(self._holes)]
        self._triangles = np.concatenate([triangles, *fans]).astype(np.int64)
        self._interpreter = per_thread(self._new_interpreter)
        interpreter = self._interpreter()
        self._input = interpreter.get_input_details()[0]["index"]
        outputs = {int(np.prod(d["shape"])): d["index"] for d in interpreter.get_output_details()}
        self._points_output, self._score_output = outputs[vertex_count * 3], outputs[1]

    @staticmethod
    def _new_interpreter() -> Interpreter:
        # one thread: a 192 px network gains little from more, and callers may run a process per core
        interpreter = Interpreter(model_path=str(fetch(MODEL_ASSET)), num_threads=1)
        interpreter.allocate_tensors()
        return interpreter

    def detect(self, crops: np.ndarray) -> FaceMesh:
        """Mesh vertices and face-presence score of every crop (see `FaceMesh`)."""
        count, side = len(crops), crops.shape[1]
        points, logit = np.zeros((count, self._vertex_count, 3), np.float32), np.zeros(count, np.float32)
        interpolation = cv2.INTER_AREA if side > INPUT_SIZE else cv2.INTER_LINEAR
        interpreter = self._interpreter()
        for i, crop in enumerate(crops):
            pixels = cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=interpolation)
            # MediaPipe feeds this network RGB floats in [0, 1]
            interpreter.set_tensor(self._input, (pixels[None] / np.float32(255)).astype(np.float32))
            interpreter.invoke()
            points[i] = interpreter.get_tensor(self._points_output).reshape(-1, 3)
            logit[i] = interpreter.get_tensor(self._score_output).item()
        score = np.exp(-np.logaddexp(0, -logit)).astype(np.float32)  # sigmoid without overflow
        return FaceMesh(points * np.float32(side / INPUT_SIZE), score)

    def landmarks(self, crops: np.ndarray) -> np.ndarray:
        """float32 [N, 468, 3] mesh vertices in crop pixels; z: smaller = nearer (see `FaceMesh`)."""
        return self.detect(crops).points

    def render(self, points: np.ndarray, side: int) -> np.ndarray:
        """The depth map of one mesh (float32 [468, 3] in the pixels of a `side`-px crop)."""
        size = self.output_size
        vertices = np.concatenate([points, *(points[loop].mean(0, keepdims=True) for loop in self._holes)])
        vertices = vertices * np.float32(size / side)
        vertices[:, 2] *= -1  # nearness: near is bright
        near = rasterise(vertices, self._triangles, size)
        face = np.isfinite(near)
        if not face.any():
            return np.zeros((size, size), np.float32)
        low, high = near[face].min(), near[face].max()
        scaled = (near - low) / max(high - low, np.finfo(np.float32).tiny)
        return np.where(face, FAR + (1 - FAR) * scaled, 0).astype(np.float32)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """float32 [N, output_size, output_size] depth maps in [0, 1]: near = bright, the farthest face
        pixel = FAR, off the mesh = 0."""
        points = self.landmarks(crops)
        maps = [self.render(mesh, crops.shape[1]) for mesh in points]
        return np.stack(maps) if maps else np.zeros((0, self.output_size, self.output_size), np.float32)
