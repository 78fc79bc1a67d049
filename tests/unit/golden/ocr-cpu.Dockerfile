# Rendered by imagekit 0.1.0 from images/ocr-cpu/image.yaml - edit the spec, not this file.
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

# TensorFlow 2.21.0 (CPU)
RUN touch /dev/shm/imagekit-step && sleep 0.02 && python3 -m venv /opt/venv \
 && /opt/venv/bin/python -c "import sys; assert sys.version.startswith('3.11.'), 'base has Python ' + sys.version.split()[0] + ', spec wants 3.11'" \
 && pip install --no-cache-dir --no-index --find-links http://127.0.0.1:17311/ --trusted-host 127.0.0.1 --target /tmp/uv uv==0.13.9 \
 && /tmp/uv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-index --find-links http://127.0.0.1:17311/ --trusted-host 127.0.0.1 tensorflow==2.21.0 \
 && rm -rf /tmp/uv \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
ENV TF_CPP_MIN_LOG_LEVEL=1

ENV OCR_DATA_DIR="/data/data"

# the folders made here, not by WORKDIR or COPY, which would give them the time of the build
# `docker run IMAGE train` (how SageMaker starts a training job) runs train.command
RUN touch /dev/shm/imagekit-step && sleep 0.02 && mkdir -p /opt/ocr \
 && printf '%s\n' '#!/bin/sh' 'cd /opt/ocr || exit 1' 'exec "python" "tools/train_shadownet.py" "--data-dir" "/data/data" "--output-dir" "/data/output" "$@"' > /usr/local/bin/train \
 && chmod 755 /usr/local/bin/train \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

WORKDIR /opt/ocr

# Training code: the last layer, the only one a code change rebuilds
COPY code/ /opt/ocr/

LABEL org.opencontainers.image.title="ocr-cpu" \
      org.opencontainers.image.description="CRNN text-line OCR training with TensorFlow (CPU)" \
      org.opencontainers.image.version="v1.0" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm" \
      io.imagekit.name="ocr-cpu" \
      io.imagekit.framework="tensorflow" \
      io.imagekit.framework.version="2.21.0" \
      io.imagekit.device="cpu" \
      io.imagekit.python="3.11" \
      io.imagekit.cuda="" \
      io.imagekit.cudnn="" \
      io.imagekit.jupyter="false" \
      io.imagekit.spec.digest="sha256:1120b584566cf163df6eac902390ae9fc29afebea24b979e31d4f9415af08c67"
