# Rendered by imagekit 0.1.0 from images/ssd-mxnet-gpu/image.yaml - edit the spec, not this file.
FROM imagekit/base:bookworm

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# System packages (Python from the distribution, mxnet runtime libraries)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libgomp1 libquadmath0 libgfortran5 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# Python 3.10 in a virtual environment at /opt/venv
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/python -c "import sys; assert sys.version.startswith('3.10.'), 'base has Python ' + sys.version.split()[0] + ', spec wants 3.10'"
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# MXNet 1.9.1 (GPU, built for CUDA 11.2); numpy<1.24 because it still uses np.bool
RUN pip install --no-cache-dir --no-index --find-links http://127.0.0.1:17311/ --trusted-host 127.0.0.1 mxnet-cu112==1.9.1 'numpy<1.24'
ENV MXNET_CUDNN_AUTOTUNE_DEFAULT=0

# GPU: the NVIDIA container runtime injects the driver; CUDA 11.2 comes from the base image
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /opt/ssd

# Training code: the last layer, the only one a code change rebuilds
COPY code/ /opt/ssd/

LABEL org.opencontainers.image.title="ssd-mxnet-gpu" \
      org.opencontainers.image.description="SSD-style detection training with MXNet Gluon (GPU)" \
      org.opencontainers.image.version="v1.0" \
      org.opencontainers.image.base.name="nvidia/cuda:11.8.0-runtime-ubuntu22.04" \
      io.imagekit.name="ssd-mxnet-gpu" \
      io.imagekit.framework="mxnet" \
      io.imagekit.framework.version="1.9.1" \
      io.imagekit.device="gpu" \
      io.imagekit.python="3.10" \
      io.imagekit.cuda="11.2" \
      io.imagekit.cudnn="8" \
      io.imagekit.jupyter="false" \
      io.imagekit.spec.digest="sha256:f847d843e8ea77c0701f5574f99678d28bfa7b73654f09309f22eb975f9043f8"
