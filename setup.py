from setuptools import find_packages, setup

# Runtime needs only what DLRM itself imports besides its data helpers; the
# rest is opt-in. torch is a range here: pin it yourself (tests use 2.13.0).
DLRM_RUNTIME = ["scikit-learn", "tqdm"]  # imported by dlrm_s_pytorch.py and its data loader

setup(
    name="dlrm-mlet",
    version="0.1.0",
    description="Multi-layer embedding training (MLET) for facebookresearch/dlrm, "
    "folded into stock DLRM checkpoints",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    # Run here: Python 3.11; torch 2.13 (CPU) and 2.14; numpy 1.26 and 2.x; TorchRec 1.8 with fbgemm-gpu(-cpu) 1.8.
    python_requires=">=3.9",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    # patches/ sits at the top of the repo (where DLRM users look for it) and
    # ships inside the package as dlrm_mlet.patches, for `dlrm-mlet patch`.
    packages=find_packages(include=["dlrm_mlet", "dlrm_mlet.*"]) + ["dlrm_mlet.patches"],
    package_dir={"dlrm_mlet.patches": "patches"},
    # map_summary.json: the tuned map `dlrm-mlet data` compares a user's data with (docs/results/map.py)
    package_data={"dlrm_mlet.patches": ["*.patch"], "dlrm_mlet.tools": ["map_summary.json"]},
    install_requires=["torch>=2.5", "numpy>=1.24", "onnx", "tensorboard"],
    extras_require={
        "dlrm": DLRM_RUNTIME + ["mlperf-logging"],
        "test": DLRM_RUNTIME + ["mlperf-logging", "pytest", "pytest-timeout", "hypothesis", "onnxruntime", "mypy"],
        "plot": ["matplotlib"],
        # torchrec itself must come with `pip install --no-deps torchrec==1.8.0`: it requires
        # the CUDA fbgemm-gpu, which pip cannot be told to skip; these are its other needs
        # (plus iopath to read Criteo). CPU: fbgemm-gpu-cpu==1.8.0; GPU: fbgemm-gpu==1.8.0.
        "torchrec": ["tensordict", "torchmetrics==1.0.3", "tqdm", "pyre-extensions", "iopath"],
    },
    entry_points={"console_scripts": ["dlrm-mlet=dlrm_mlet.cli:main"]},
)
