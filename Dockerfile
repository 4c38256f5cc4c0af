# RegionMIR image for KubeRay: Ray head/worker pods of the training RayJobs, the index RayJob and
# the query RayService all run this one image (KubeRay wants the same Ray and Python everywhere).
#
#   CPU (dev clusters):  docker build -t regionmir:2.60.0 .
#   GPU (NVIDIA nodes):  docker build --build-arg GPU_SUFFIX=-gpu \
#                          --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t regionmir:2.60.0-gpu .
#
# The Ray version of the base image is the `ray[...]==` pin in pyproject.toml and the `rayVersion`
# of every manifest under k8s/ (tests/test_k8s_manifests.py checks all three agree).
ARG GPU_SUFFIX=""
FROM rayproject/ray:2.60.0-py311${GPU_SUFFIX}

# torch/torchvision first, pinned as in the Makefile, so no resolver ever picks another build.
# The CPU image takes PyTorch's CPU-only wheels (no CUDA libraries); the GPU image takes the CUDA
# wheels from PyPI.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1

COPY --chown=ray:users . /app
WORKDIR /app
RUN pip install --no-cache-dir . \
    && python -c "import serving.deployments, training.cli, indexing.build"

# The base image's user (ray) and entry point stay as they are: KubeRay supplies `ray start`.
