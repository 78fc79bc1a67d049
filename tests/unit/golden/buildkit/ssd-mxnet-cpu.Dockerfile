# Rendered by imagekit 0.1.0 from images/ssd-mxnet-cpu/image.yaml - edit the spec, not this file.
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

# MXNet 1.9.1 (CPU); numpy<1.24 because it still uses np.bool
RUN --mount=type=bind,from=wheels-framework,target=/wheels --network=none touch /dev/shm/imagekit-step && sleep 0.02 && python3 -m venv /opt/venv \
 && /opt/venv/bin/python -c "import sys; assert sys.version.startswith('3.11.'), 'base has Python ' + sys.version.split()[0] + ', spec wants 3.11'" \
 && pip install --no-cache-dir --no-index --find-links /wheels --target /tmp/uv uv==0.13.9 \
 && /tmp/uv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-index --find-links /wheels mxnet==1.9.1 'numpy<1.24' \
 && rm -rf /tmp/uv \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
ENV MXNET_CUDNN_AUTOTUNE_DEFAULT=0

# the folders made here, not by WORKDIR or COPY, which would give them the time of the build
# `docker run IMAGE train` (how SageMaker starts a training job) runs train.command
RUN --network=none touch /dev/shm/imagekit-step && sleep 0.02 && mkdir -p /opt/ssd \
 && printf '%s\n' '#!/bin/sh' 'cd /opt/ssd || exit 1' 'exec "python" "train.py" "--batch-size" "32" "--data-dir" "/data/data" "--output-dir" "/data/output" "$@"' > /usr/local/bin/train \
 && chmod 755 /usr/local/bin/train \
 && touch -h -d "@$SOURCE_DATE_EPOCH" /etc \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname -o -path /wheels \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

WORKDIR /opt/ssd

# Training code: the last layer, the only one a code change rebuilds
COPY code/ /opt/ssd/

LABEL org.opencontainers.image.title="ssd-mxnet-cpu" \
      org.opencontainers.image.description="SSD-style detection training with MXNet Gluon (CPU)" \
      org.opencontainers.image.version="v1.0" \
      org.opencontainers.image.base.name="python:3.11-slim-bookworm" \
      io.imagekit.name="ssd-mxnet-cpu" \
      io.imagekit.framework="mxnet" \
      io.imagekit.framework.version="1.9.1" \
      io.imagekit.device="cpu" \
      io.imagekit.python="3.11" \
      io.imagekit.cuda="" \
      io.imagekit.cudnn="" \
      io.imagekit.jupyter="false" \
      io.imagekit.spec.digest="sha256:a4a89a8fcbbfde81a478a7074288afb10521a8881e5812aeff99fb11d37c5301"
