"""unet-perf: a fast, graph-mode U-Net training library for TensorFlow 1.15 (Ascend npu_bridge) and 2.x."""
from setuptools import find_packages, setup

setup(
    name="unet-perf",
    version="0.1.0",
    description="Graph-mode U-Net training for EM membrane segmentation on Ascend (TF 1.15) and TF 2.x",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["unet_perf", "unet_perf.*"]),
    python_requires=">=3.7",
    install_requires=[
        "numpy",
        "opencv-python-headless",
        "pillow",  # reads the indices of palette label PNGs (OpenCV expands them to colours)
        "tifffile",  # streams large TIFFs strip by strip for prediction (unet_perf.inference.image_io)
        # The Ascend stack (Python 3.7) ships its own TensorFlow 1.15 and npu_bridge: install nothing there.
        'tensorflow>=2.13; python_version>="3.8"',
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",  # two test processes (pytest.ini)
            "pytest-benchmark",
            "vermin",
            "scikit-image",  # reference metrics in tests
        ],
        "plots": ["matplotlib"],
    },
    entry_points={"console_scripts": ["unet-perf-train=unet_perf.train:main"]},
)
