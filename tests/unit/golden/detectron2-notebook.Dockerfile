# Rendered by imagekit 0.1.0 from images/detectron2-notebook/image.yaml - edit the spec, not this file.
FROM detectron2-base:v1.0
# every file a RUN step writes gets this time (partials/reproducible.j2)
ARG SOURCE_DATE_EPOCH=315532800

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# JupyterLab for notebook work; the platform passes its base URL in PUMPKIN_JPY_BASE_URL or NB_PREFIX
RUN touch /dev/shm/imagekit-step && sleep 0.02 && pip install --no-cache-dir --no-index --find-links http://127.0.0.1:17311/ --trusted-host 127.0.0.1 --target /tmp/uv uv==0.13.9 \
 && /tmp/uv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-index --find-links http://127.0.0.1:17311/ --trusted-host 127.0.0.1 torch==2.13.0 jupyterlab==4.6.6 \
 && rm -rf /tmp/uv \
 && find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /etc/hosts -o -path /etc/resolv.conf -o -path /etc/hostname \) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

LABEL org.opencontainers.image.title="detectron2-notebook" \
      org.opencontainers.image.description="JupyterLab notebook image built FROM detectron2-base" \
      org.opencontainers.image.version="v1.0" \
      org.opencontainers.image.base.name="detectron2-base:v1.0" \
      io.imagekit.name="detectron2-notebook" \
      io.imagekit.framework="pytorch" \
      io.imagekit.framework.version="2.13.0" \
      io.imagekit.device="cpu" \
      io.imagekit.python="3.11" \
      io.imagekit.cuda="" \
      io.imagekit.cudnn="" \
      io.imagekit.jupyter="true" \
      io.imagekit.spec.digest="sha256:965ebe836318666750a6fbd390b5f5c7ff7666542c799a0834fd257ac73a63d6" \
      io.imagekit.parent="detectron2-base"

EXPOSE 8888
# the platform's URL prefix from PUMPKIN_JPY_BASE_URL, NB_PREFIX; the notebook folder falls back to
# $HOME where the platform does not mount /code (Kubeflow mounts the home)
CMD ["/bin/bash", "-c", "d=/code; [ -d \"$d\" ] || d=\"$HOME\"; exec jupyter lab --no-browser --ip=0.0.0.0 --allow-root --port=8888 --notebook-dir=\"$d\" --ServerApp.token='' --ServerApp.password='' --ServerApp.base_url=\"${PUMPKIN_JPY_BASE_URL:-${NB_PREFIX:-/}}\""]
