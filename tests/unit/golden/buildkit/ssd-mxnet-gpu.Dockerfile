# Rendered by imagekit 0.1.0 from images/ssd-mxnet-gpu/image.yaml - edit the spec, not this file.
FROM imagekit/base:bookworm
# every file a RUN step writes gets this time (partials/reproducible.j2)
ARG SOURCE_DATE_EPOCH=315532800

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# System packages (mxnet runtime libraries): from the Debian mirror, the one step with the network
RUN touch /dev/shm/imagekit-step && sleep 0.02 && apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 libquadmath0 libgfortran5 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && find /var/log /var/cache/ldconfig -type f -newer /dev/shm/imagekit-step -exec truncate -s 0 {} + \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# Python 3.11 in a virtual environment at /opt/venv (made by the framework's step)
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# MXNet 1.9.1 (GPU, CUDA 11.8 / cuDNN 8.9); numpy<1.24 because it still uses np.bool
RUN --mount=type=bind,from=wheels-framework,target=/wheels --network=none touch /dev/shm/imagekit-step && sleep 0.02 && python3 -m venv /opt/venv \
 && /opt/venv/bin/python -c "import sys; assert sys.version.startswith('3.11.'), 'base has Python ' + sys.version.split()[0] + ', spec wants 3.11'" \
 && pip install --no-cache-dir --no-index --find-links /wheels --target /tmp/uv uv==0.13.9 \
 && /tmp/uv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-index --find-links /wheels mxnet-cu112==1.9.1 'numpy<1.24' nvidia-cuda-runtime-cu11==11.8.89 nvidia-cublas-cu11==11.11.3.6 nvidia-cudnn-cu11==8.9.6.50 nvidia-cufft-cu11==10.9.0.58 nvidia-curand-cu11==10.3.0.86 nvidia-cusolver-cu11==11.4.1.48 nvidia-cuda-nvrtc-cu11==11.8.89 nvidia-nccl-cu11==2.21.5 nvidia-nvtx-cu11==11.8.86 \
 && rm -rf /tmp/uv \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
ENV MXNET_CUDNN_AUTOTUNE_DEFAULT=0

# GPU: the NVIDIA container runtime injects the driver; CUDA 11.8 comes from NVIDIA's CUDA wheels
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cufft/lib:/opt/venv/lib/python3.11/site-packages/nvidia/curand/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cusolver/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib:/opt/venv/lib/python3.11/site-packages/nvidia/nccl/lib:/opt/venv/lib/python3.11/site-packages/nvidia/nvtx/lib

# the folders made here, not by WORKDIR or COPY, which would give them the time of the build
# `docker run IMAGE train` (how SageMaker starts a training job) runs train.command
RUN --network=none touch /dev/shm/imagekit-step && sleep 0.02 && mkdir -p /opt/ssd \
 && printf '%s\n' '#!/bin/sh' 'cd /opt/ssd || exit 1' 'exec "python" "train.py" "--gpus" "0,1" "--batch-size" "32" "--data-dir" "/data/data" "--output-dir" "/data/output" "$@"' > /usr/local/bin/train \
 && chmod 755 /usr/local/bin/train \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

WORKDIR /opt/ssd

# Training code: the last layer, the only one a code change rebuilds
COPY code/ /opt/ssd/

LABEL org.opencontainers.image.title="ssd-mxnet-gpu" \
      org.opencontainers.image.description="SSD-style detection training with MXNet Gluon (GPU)" \
      org.opencontainers.image.version="v1.0" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm" \
      io.imagekit.name="ssd-mxnet-gpu" \
      io.imagekit.framework="mxnet" \
      io.imagekit.framework.version="1.9.1" \
      io.imagekit.device="gpu" \
      io.imagekit.python="3.11" \
      io.imagekit.cuda="11.8" \
      io.imagekit.cudnn="8.9" \
      io.imagekit.jupyter="false" \
      io.imagekit.spec.digest="sha256:8580a28fde9096d3f61bbe07db7e5f376c4b2701fe1315edcbeac5efd301a9e2" \
      io.imagekit.nccl="2.21" \
      io.imagekit.cuda.build="11.2" \
      io.imagekit.cudnn.build="8" \
      io.imagekit.cuda.archs="sm_50 sm_60 sm_70 sm_80 sm_86" \
      io.imagekit.driver.min="450.80.02"
