# Rendered by imagekit 0.1.0 from images/detectron2-notebook/image.yaml - edit the spec, not this file.
FROM detectron2-base:v1.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# JupyterLab for notebook work; the platform passes its base URL in $PUMPKIN_JPY_BASE_URL
RUN --mount=type=bind,from=wheels-jupyter,target=/wheels --network=none pip install --no-cache-dir --no-index --find-links /wheels --target /tmp/uv uv==0.13.9 \
 && /tmp/uv/bin/uv pip install --no-cache --compile-bytecode --python /opt/venv/bin/python --no-index --find-links /wheels torch==2.13.0 jupyterlab==4.6.6 \
 && rm -rf /tmp/uv
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
      io.imagekit.spec.digest="sha256:3e89ef81a291ed0590d29c386880dd2b7cb8d05c76c1ea962b63000343b64070" \
      io.imagekit.parent="detectron2-base"

EXPOSE 8888
CMD ["/bin/bash", "-c", "exec jupyter lab --no-browser --ip=0.0.0.0 --allow-root --port=8888 --notebook-dir=/code --ServerApp.token='' --ServerApp.password='' --ServerApp.base_url=\"${PUMPKIN_JPY_BASE_URL:-/}\""]
