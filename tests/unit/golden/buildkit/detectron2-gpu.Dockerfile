# Rendered by imagekit 0.1.0 from images/detectron2-gpu/image.yaml - edit the spec, not this file.
FROM imagekit/base:bookworm
# every file a RUN step writes gets this time (partials/reproducible.j2)
ARG SOURCE_DATE_EPOCH=315532800

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11 in a virtual environment at /opt/venv (made by the framework's step)
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# PyTorch 2.13.0 (GPU, CUDA 13.0 / cuDNN 9.20 from pip)
RUN --mount=type=bind,from=wheels-framework,target=/wheels --network=none touch /dev/shm/imagekit-step && sleep 0.02 && python3 -m venv /opt/venv \
 && /opt/venv/bin/python -c "import sys; assert sys.version.startswith('3.11.'), 'base has Python ' + sys.version.split()[0] + ', spec wants 3.11'" \
 && pip install --no-cache-dir --no-index --find-links /wheels --target /tmp/uv uv==0.13.9 \
 && /tmp/uv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-index --find-links /wheels torch===2.13.0 cuda-toolkit==13.0.3 nvidia-cublas==13.1.1.3 nvidia-cuda-cupti==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cudnn-cu13==9.20.0.48 nvidia-cufft==12.0.0.61 nvidia-cufile==1.15.1.6 nvidia-curand==10.4.0.35 nvidia-cusolver==12.0.4.66 nvidia-cusparse==12.6.3.3 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.29.7 nvidia-nvjitlink==13.0.88 nvidia-nvshmem-cu13==3.4.5 nvidia-nvtx==13.0.85 \
 && rm -rf /tmp/uv \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# GPU: the NVIDIA container runtime injects the driver; CUDA 13.0 comes from the framework's wheels
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Other Python packages (framework pins repeated so nothing replaces them)
RUN --mount=type=bind,from=wheels-pip,target=/wheels --network=none touch /dev/shm/imagekit-step && sleep 0.02 && pip install --no-cache-dir --no-index --find-links /wheels --target /tmp/uv uv==0.13.9 \
 && /tmp/uv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-index --find-links /wheels torch===2.13.0 cuda-toolkit==13.0.3 nvidia-cublas==13.1.1.3 nvidia-cuda-cupti==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cudnn-cu13==9.20.0.48 nvidia-cufft==12.0.0.61 nvidia-cufile==1.15.1.6 nvidia-curand==10.4.0.35 nvidia-cusolver==12.0.4.66 nvidia-cusparse==12.6.3.3 nvidia-cusparselt-cu13==0.8.1 nvidia-nccl-cu13==2.29.7 nvidia-nvjitlink==13.0.88 nvidia-nvshmem-cu13==3.4.5 nvidia-nvtx==13.0.85 pyyaml==6.0.3 numpy==2.4.6 \
 && rm -rf /tmp/uv \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# the folders made here, not by WORKDIR or COPY, which would give them the time of the build
# `docker run IMAGE train` (how SageMaker starts a training job) runs train.command
RUN --network=none touch /dev/shm/imagekit-step && sleep 0.02 && mkdir -p /opt/detectron2 \
 && printf '%s\n' '#!/bin/sh' 'cd /opt/detectron2 || exit 1' 'exec "python" "tools/train_net.py" "--config-file" "configs/faster_rcnn_tiny.yaml" "--num-gpus" "1" "OUTPUT_DIR" "/model" "DATASETS.ROOT" "/data/data" "$@"' > /usr/local/bin/train \
 && chmod 755 /usr/local/bin/train \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

WORKDIR /opt/detectron2

# Training code: the last layer, the only one a code change rebuilds
COPY code/ /opt/detectron2/

LABEL org.opencontainers.image.title="detectron2-gpu" \
      org.opencontainers.image.description="Detectron2-style detection training with PyTorch (GPU)" \
      org.opencontainers.image.version="v1.0" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm" \
      io.imagekit.name="detectron2-gpu" \
      io.imagekit.framework="pytorch" \
      io.imagekit.framework.version="2.13.0" \
      io.imagekit.device="gpu" \
      io.imagekit.python="3.11" \
      io.imagekit.cuda="13.0" \
      io.imagekit.cudnn="9.20" \
      io.imagekit.jupyter="false" \
      io.imagekit.spec.digest="sha256:5979f935b5d227c7e116859cbe0d8c1a54e91062aab60221b01c9b27bb7edc8f" \
      io.imagekit.nccl="2.29" \
      io.imagekit.cuda.build="13.0" \
      io.imagekit.cudnn.build="9.20" \
      io.imagekit.cuda.archs="sm_75 sm_80 sm_86 sm_89 sm_90 sm_100 sm_103 sm_120 sm_121" \
      io.imagekit.driver.min="580.65.06"
