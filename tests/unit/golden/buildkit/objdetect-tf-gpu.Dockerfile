# Rendered by imagekit 0.1.0 from images/objdetect-tf-gpu/image.yaml - edit the spec, not this file.
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

# TensorFlow 2.21.0 (GPU, CUDA 12.9 / cuDNN 9.28 from pip)
RUN --mount=type=bind,from=wheels-framework,target=/wheels --network=none touch /dev/shm/imagekit-step && sleep 0.02 && python3 -m venv /opt/venv \
 && /opt/venv/bin/python -c "import sys; assert sys.version.startswith('3.11.'), 'base has Python ' + sys.version.split()[0] + ', spec wants 3.11'" \
 && pip install --no-cache-dir --no-index --find-links /wheels --target /tmp/uv uv==0.13.9 \
 && /tmp/uv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-index --find-links /wheels 'tensorflow[and-cuda]==2.21.0' nvidia-cublas-cu12==12.9.3.13 nvidia-cuda-cupti-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86 nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cudnn-cu12==9.28.0.42 nvidia-cufft-cu12==11.4.1.4 nvidia-curand-cu12==10.3.10.19 nvidia-cusolver-cu12==11.7.5.82 nvidia-cusparse-cu12==12.5.10.65 nvidia-nccl-cu12==2.32.3 nvidia-nvjitlink-cu12==12.9.86 \
 && rm -rf /tmp/uv \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
ENV TF_CPP_MIN_LOG_LEVEL=1

# GPU: the NVIDIA container runtime injects the driver; CUDA 12.9 comes from the framework's wheels
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# the folders made here, not by WORKDIR or COPY, which would give them the time of the build
# `docker run IMAGE train` (how SageMaker starts a training job) runs train.command
RUN --network=none touch /dev/shm/imagekit-step && sleep 0.02 && mkdir -p /opt/objdetect \
 && printf '%s\n' '#!/bin/sh' 'cd /opt/objdetect || exit 1' 'exec "python" "train.py" "--logtostderr" "--pipeline_config_path=configs/pipeline.config" "--train_dir=/data/output" "$@"' > /usr/local/bin/train \
 && chmod 755 /usr/local/bin/train \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

WORKDIR /opt/objdetect

# Training code: the last layer, the only one a code change rebuilds
COPY code/ /opt/objdetect/

LABEL org.opencontainers.image.title="objdetect-tf-gpu" \
      org.opencontainers.image.description="TensorFlow object detection from a pipeline config (GPU)" \
      org.opencontainers.image.version="v1.0" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm" \
      io.imagekit.name="objdetect-tf-gpu" \
      io.imagekit.framework="tensorflow" \
      io.imagekit.framework.version="2.21.0" \
      io.imagekit.device="gpu" \
      io.imagekit.python="3.11" \
      io.imagekit.cuda="12.9" \
      io.imagekit.cudnn="9.28" \
      io.imagekit.jupyter="false" \
      io.imagekit.spec.digest="sha256:8c493354c83329815f74edca7991a11af0b144ba60bb27dd4750204de71ffd3c" \
      io.imagekit.nccl="2.32" \
      io.imagekit.cuda.build="12.5.1" \
      io.imagekit.cudnn.build="9" \
      io.imagekit.cuda.archs="sm_60 sm_70 sm_80 sm_89 compute_90" \
      io.imagekit.driver.min="525.60.13"
